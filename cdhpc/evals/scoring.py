"""Scoring one task on one loaded model (`score`): the choice, reading and perplexity paths, the
pack each builds or reads from the cache, and the errors naming an item longer than the model's context.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdhpc.evals import task_metric
from cdhpc.evals.data import EvalDataError
from cdhpc.evals.task import Task

if TYPE_CHECKING:
    from cdhpc.evals.run import EvalOptions

log = logging.getLogger("cdhpc")


def score_task(
    task: Task, prepared: Any, model: Any, tokenizer: Any, opt: EvalOptions, files: list[Path], packs: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Prediction rows, summary fields and official files of one task on one model. `tokenizer`:
    () -> the model's tokenizer (loaded on first use: a pack read from the cache needs none);
    `packs`: (max_tokens, build) -> the task's PreparedPack from the pack cache, or built."""
    if task.kind == "choice":
        from cdhpc.evals.choice import summarize_choice

        items, sources = prepared
        scores, n_truncated = _choice_scores(task, items, sources, model, tokenizer, opt, packs)
        rows, fields, official = summarize_choice(task, items, scores, task_metric(task.name, opt.wug_metric))
        return rows, {**fields, "n_truncated": n_truncated}, official
    if task.kind == "reading":
        return _reading(task, prepared, model, tokenizer, opt, files, packs)
    import torch

    from cdhpc.evals.engine import block_losses
    from cdhpc.evals.perplexity import MAX_BLOCK, cut_blocks, heldout_ids, summarize_perplexity

    block = min(MAX_BLOCK, int(model.config.max_position_embeddings))
    blocks = torch.tensor(cut_blocks(heldout_ids(tokenizer(), prepared), block))
    losses = block_losses(model, blocks, batch_size=max(1, opt.batch_size // 8), device=opt.device)
    return summarize_perplexity(losses, blocks.shape[1])


def _reading(
    task: Task, prepared: Any, model: Any, tokenizer: Any, opt: EvalOptions, files: list[Path], packs: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Reading / eye tracking on one model, its word pieces packed once per tokenizer (`packs`)."""
    from cdhpc.evals.engine import ContextLengthError, context_limit
    from cdhpc.evals.reading import pack_surprisals, reading_pack, summarize_reading, word_pairs

    rows, columns = prepared
    pairs, word_idx, prev_idx = word_pairs(rows, opt.scoring)
    limit = context_limit(model)
    try:
        pack = packs(
            limit,
            lambda: reading_pack(
                tokenizer(), pairs, opt.scoring, batch_size=opt.batch_size, max_tokens=limit
            ),
        )
    except ContextLengthError as err:
        raise EvalDataError(
            _reading_too_long(
                err, files[0], task.name, rows, pairs, word_idx, prev_idx, tokenizer(), opt.scoring
            )
        ) from None
    surprisal = pack_surprisals(model, pack, len(pairs), opt.device)
    return summarize_reading(task.name, rows, columns, pairs, surprisal, word_idx, prev_idx)


def _choice_scores(
    task: Task,
    items: list,
    sources: list[tuple[Path, int]],
    model: Any,
    tokenizer: Any,
    opt: EvalOptions,
    packs: Any,
) -> tuple[list[float], int]:
    """Every candidate's log-prob and how many candidates were cut to fit the model's context
    (0 unless opt.truncate; without it a candidate that does not fit is an error naming it)."""
    from cdhpc.evals.batches import score_pack
    from cdhpc.evals.engine import context_limit

    limit = context_limit(model)
    pack = packs(limit, lambda: _choice_pack(task, items, sources, tokenizer(), opt, limit))
    cut = pack.meta.get("truncated")
    if cut:
        log.warning(
            "%s: %d of %d candidates are longer than the model's context of %d positions "
            "(longest: %d tokens), cut from the left (--truncate); first: %s",
            task.name,
            cut["n"],
            cut["of"],
            limit,
            cut["longest"],
            _choice_place(cut["first"], items, sources),
        )
    return score_pack(model, pack, opt.device), cut["n"] if cut else 0


def _choice_pack(
    task: Task,
    items: list,
    sources: list[tuple[Path, int]],
    tokenizer: Any,
    opt: EvalOptions,
    limit: int | None,
) -> Any:
    """The prepared batches of every candidate (the host work the pack cache keeps); its meta
    says what was truncated (opt.truncate), so a pack read back logs the same warning."""
    from cdhpc.evals.batches import prepare_pack
    from cdhpc.evals.choice import item_requests
    from cdhpc.evals.engine import ContextLengthError, encode_requests

    requests = item_requests(items)
    try:
        full, scored = encode_requests(tokenizer, requests, opt.scoring, max_tokens=limit)
        meta = {}
    except ContextLengthError as err:
        if not opt.truncate:
            raise EvalDataError(_choice_too_long(err, task, items, sources)) from None
        meta = {
            "truncated": {
                "n": len(err.rows),
                "of": len(requests),
                "longest": max(err.lengths),
                "first": err.rows[0],
            }
        }
        full, scored = encode_requests(tokenizer, requests, opt.scoring, max_tokens=limit, truncate=True)
    return prepare_pack(full, scored, opt.batch_size, meta=meta)


def _choice_place(request: int, items: list, sources: list[tuple[Path, int]]) -> str:
    """Where candidate `request` (in item_requests order) comes from: file:line, item id, index."""
    from cdhpc.evals.choice import item_ids

    k = request
    for i, item in enumerate(items):
        if k < len(item.continuations):
            path, line_no = sources[i]
            return (
                f"{path}:{line_no}: item {item_ids(items)[i]} (uid {item.uid!r}, item index {i}), "
                f"candidate {k}"
            )
        k -= len(item.continuations)
    raise AssertionError(f"request {request} beyond the {len(items)} items")


def _choice_too_long(err: Any, task: Task, items: list, sources: list[tuple[Path, int]]) -> str:
    """The error of a candidate longer than the model's context: where it is, its length, the fix."""
    more = (
        f" ({len(err.rows) - 1} more candidate(s) of {task.name} are too long)" if len(err.rows) > 1 else ""
    )
    return (
        f"{_choice_place(err.rows[0], items, sources)}: {err.lengths[0]} tokens (context + "
        f"continuation, special tokens included), but the model's context is {err.limit} positions "
        f"(max_position_embeddings){more}; shorten the item, use a model with a longer context, or "
        "pass --truncate (EvalOptions.truncate) to cut it from the left"
    )


def _reading_too_long(
    err: Any,
    path: Path,
    kind: str,
    rows: list[dict[str, str]],
    pairs: list,
    word_idx: list[int],
    prev_idx: list[int],
    tokenizer: Any,
    scoring: str,
) -> str:
    """The error of a reading context longer than the model's context, naming its first row."""
    pair = err.rows[0]
    if scoring == "official":  # one sequence per word piece: which pair it belongs to
        from cdhpc.evals.reading import official_sequences

        pair = int(official_sequences(tokenizer, pairs)[2][pair])
    row = next(i for i in range(len(rows)) if pair in (word_idx[i], prev_idx[i]))
    which = "word" if word_idx[row] == pair else "prev_word"
    return (
        f"{path}:{row + 2}: reading row {row} (uid {kind!r}, item {row}): {which} "
        f"{pairs[pair][1]!r} with the text before it is {err.lengths[0]} tokens (special tokens "
        f"included), but the model's context is {err.limit} positions (max_position_embeddings); "
        "shorten the text or use a model with a longer context (--truncate applies to the "
        "sentence tasks only)"
    )


def aoa_too_long(err: Any, files: list[Path], data: Any) -> str:
    """The error of an AoA word in a context longer than the model's context, naming both."""
    k = err.rows[0]
    for word, contexts in zip(data.words, data.contexts):
        if k < len(contexts):
            path = next(f for f in files if f.name == "cdi_childes.json")
            return (
                f"{path}: word {word!r}, context {k}: {err.lengths[0]} tokens (context + word, "
                f"special tokens included), but the model's context is {err.limit} positions "
                "(max_position_embeddings); shorten the context or use a model with a longer "
                "context (--truncate applies to the sentence tasks only)"
            )
        k -= len(contexts)
    raise AssertionError(f"request {err.rows[0]} beyond the aoa requests")

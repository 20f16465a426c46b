"""The scoring engine: log P(continuation | context) for many requests, fast and exact.

Which tokens are scored follows a `scoring` rule (docs/evaluation.md):
- ``official`` (the default), the BabyLM 2025 pipeline's causal rule: the text context +
  continuation is tokenized as the tokenizer does it, special tokens included (a BOS only where
  the tokenizer adds one); position 0 is never scored (nothing predicts it); a later token is
  scored when its character span ends past len(context) + the first token's start offset
  (`phrase_mask` of the official dataset.py).
- ``joint``, our rule: BOS + the text without the tokenizer's special tokens, every token ending
  inside the continuation scored (the first word of a sentence counts too, whatever the tokenizer).
Token-level requests (`score_sequences`) take ready-made ids and a scored mask; the official
reading rule builds those (cdhpc.evals.reading).

Why it is fast, with the same numbers as one-string-at-a-time scoring:
- all requests are tokenized in one call, sorted by token ids and merged, neighbour by neighbour,
  into token tries of a bounded size (`row_tokens`): each trie (a forest when sequences start with
  different tokens) is one packed row, so every shared prefix (the BOS, a BLiMP pair's common
  start, an EWoK or entity-tracking context, the earlier words of a reading text, and whatever
  prefixes different items happen to share) runs once; each token attends to its ancestors only
  and its RoPE position is its depth, so every branch sees exactly what it would see alone;
- rows are sorted by length and batched, so padding is small;
- the output head runs once per distinct predicting token (a branch point predicts all of its
  children from one row of logits), in bounded row chunks normalised in fp32 and gathered at the
  targets: no B x T x V logits or log-softmax are ever materialised;
- scores are accumulated on the device and copied to the host once.
torch is imported inside functions so `import cdhpc.evals.engine` stays cheap.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

from cdhpc.evals import SCORING
from cdhpc.evals.data import EvalDataError
from cdhpc.evals.packing import ROW_TOKENS, PackedRow, pack_sequences


@dataclass(frozen=True)
class ScoreRequest:
    """One candidate: the text it is conditioned on and the text it scores."""

    context: str
    continuation: str


class ContextLengthError(EvalDataError):
    """Token sequences longer than the model's context: `rows` their indices (in request order),
    `lengths` their token counts (special tokens included), `limit` the context in positions."""

    def __init__(self, rows: Any, lengths: Any, limit: int) -> None:
        self.rows, self.lengths, self.limit = [int(r) for r in rows], [int(n) for n in lengths], limit
        super().__init__(
            f"{len(self.rows)} token sequence(s) longer than the model's context of "
            f"{limit} positions (max_position_embeddings); the longest has "
            f"{max(self.lengths)} tokens"
        )


def context_limit(model: Any) -> int | None:
    """The positions a model was built for (its config's max_position_embeddings; None: unknown).
    A RoPE model runs past it without complaint, so scores there would silently mean nothing."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


def check_context(full: Any, limit: int | None) -> None:
    """ContextLengthError when a row of `full` ((n x width) ids, -1 past each end) is longer
    than `limit` tokens."""
    import numpy as np

    if limit is None or full.shape[1] <= limit:
        return
    lengths = (full >= 0).sum(axis=1)
    over = np.flatnonzero(lengths > limit)
    if len(over):
        raise ContextLengthError(over, lengths[over], limit)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a burst of small lists is built: with transformers
    loaded, a full collection walks ~400k objects (about 0.2 s) and would run several times for a
    large task; nothing built here forms a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def encode_requests(
    tokenizer: Any,
    requests: list[ScoreRequest],
    scoring: str = "official",
    max_tokens: int | None = None,
    truncate: bool = False,
) -> tuple[Any, Any]:
    """(requests x width) token ids of each request's text, -1 past each end (one tokenizer call
    for all), and the mask of the scored tokens, under the `scoring` rule (module docstring).

    `max_tokens` (the model's context): a longer sequence (special tokens and joint's BOS
    included) raises ContextLengthError before any (requests x width) array exists, or, with
    `truncate`, loses its first tokens: official keeps the last `max_tokens` tokens (a BOS the
    tokenizer adds goes with the rest; the first kept token is not scored, nothing predicts it),
    joint keeps its BOS and the last `max_tokens - 1` text tokens. Tokens are scored by the same
    character rule as before the cut."""
    import numpy as np

    if scoring not in SCORING:
        raise ValueError(f"scoring {scoring!r}: allowed are {', '.join(SCORING)}")
    official = scoring == "official"
    if not official and tokenizer.bos_token_id is None:
        raise ValueError(
            "scoring 'joint' prepends BOS but the tokenizer has no bos_token; "
            "use scoring 'official' or set bos_token"
        )
    n = len(requests)
    with gc_paused():
        enc = tokenizer(
            [r.context + r.continuation for r in requests],
            add_special_tokens=official,
            return_offsets_mapping=True,
        )
        lens = np.fromiter(map(len, enc["input_ids"]), dtype=np.int64, count=n)
        total = int(lens.sum())
        ids = np.fromiter(chain.from_iterable(enc["input_ids"]), dtype=np.int64, count=total)
        ends = np.fromiter(
            (end for offsets in enc["offset_mapping"] for _, end in offsets), dtype=np.int64, count=total
        )
        first = np.fromiter(
            (offsets[0][0] if offsets else 0 for offsets in enc["offset_mapping"]), dtype=np.int64, count=n
        )
    threshold = np.fromiter((len(r.context) for r in requests), dtype=np.int64, count=n)
    lead = 0 if official else 1  # joint: a BOS column in front of the text's tokens
    if max_tokens is not None:
        lens, ids, ends = _fit_context(lens, ids, ends, lead, max_tokens, truncate)
    if official:
        threshold += first  # the official phrase mask shifts by the first token's start offset
    width = int(lens.max(initial=0)) + lead
    inside = np.arange(width - lead)[None, :] < lens[:, None]
    full = np.full((n, width), -1, dtype=np.int64)
    scored = np.zeros((n, width), dtype=bool)
    if not official:
        full[:, 0] = tokenizer.bos_token_id
    full[:, lead:][inside] = ids
    scored[:, lead:][inside] = ends > np.repeat(threshold, lens)
    scored[:, 0] = False  # nothing predicts the first token
    return full, scored


def _fit_context(
    lens: Any, ids: Any, ends: Any, lead: int, max_tokens: int, truncate: bool
) -> tuple[Any, Any, Any]:
    """Row lengths and flat token ids / character ends with every row within `max_tokens` (+
    `lead` columns in front): ContextLengthError, or with `truncate` each row's first tokens cut."""
    import numpy as np

    cut = np.clip(lens + lead - max_tokens, 0, lens)
    if not cut.any():
        return lens, ids, ends
    if not truncate:
        over = np.flatnonzero(cut)
        raise ContextLengthError(over, lens[over] + lead, max_tokens)
    starts = np.cumsum(lens) - lens
    keep = np.arange(len(ids)) - np.repeat(starts, lens) >= np.repeat(cut, lens)
    return lens - cut, ids[keep], ends[keep]


def pack_requests(
    tokenizer: Any, requests: list[ScoreRequest], scoring: str = "official", row_tokens: int = ROW_TOKENS
) -> list[PackedRow]:
    """Encode every request (`encode_requests`) and pack them (`pack_sequences`)."""
    return pack_sequences(*encode_requests(tokenizer, requests, scoring), row_tokens)


def score_candidates(
    model: Any,
    tokenizer: Any,
    requests: list[ScoreRequest],
    *,
    scoring: str = "official",
    batch_size: int = 64,
    device: str = "cpu",
    row_tokens: int = ROW_TOKENS,
) -> list[float]:
    """log P(continuation | context) of each request: the SUM of the log-probs (nats) of the
    tokens the `scoring` rule scores, no length normalisation. Same order as `requests`.
    `batch_size` is in packed rows (of about `row_tokens` tokens each)."""
    if not requests:
        return []
    full, scored = encode_requests(tokenizer, requests, scoring, max_tokens=context_limit(model))
    return score_sequences(model, full, scored, batch_size=batch_size, device=device, row_tokens=row_tokens)


def score_sequences(
    model: Any,
    full: Any,
    scored: Any,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    row_tokens: int = ROW_TOKENS,
) -> list[float]:
    """Sum of the log-probs (nats) of the scored tokens of each sequence ((n x width) token ids,
    -1 past each end; `scored` the (n x width) mask, never position 0). Same order as the rows.
    A sequence longer than the model's context raises ContextLengthError (rows: its index).
    The host work (`prepare_pack`) and the model's (`score_pack`) are separate steps there, so
    the first can be done once for many checkpoints (cdhpc.evals.packcache)."""
    from cdhpc.evals.batches import prepare_pack, score_pack

    check_context(full, context_limit(model))
    return score_pack(model, prepare_pack(full, scored, batch_size, row_tokens), device)


def block_losses(model: Any, blocks: Any, *, batch_size: int = 8, device: str = "cpu") -> list[float]:
    """Mean next-token cross-entropy (nats) of each row of `blocks` (n_blocks x L token ids):
    the L-1 tokens after the first, given everything before them in the block."""
    import torch

    from cdhpc.evals.batches import head_budget, head_logprobs, plan_head, to_device

    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for s in range(0, blocks.shape[0], batch_size):
            rows = blocks[s : s + batch_size]
            targets = rows[:, 1:].reshape(-1).numpy()
            plan, _ = plan_head(range(len(targets)), targets, head.weight.shape[0], head_budget(device))
            hidden = base(input_ids=to_device(rows, device), use_cache=False).last_hidden_state[:, :-1]
            lp = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), plan, device)
            out.append(-lp.view(rows.shape[0], -1).mean(dim=1))
    return torch.cat(out).cpu().tolist() if out else []

"""Running the aoa task (cdhpc.evals.aoa holds the method): every checkpoint of one run scores
the CDI words in their contexts, then one curve fit per word gives the run's curve fitness.

The requests are tokenized and packed once and reused by every checkpoint whose tokenizer files
are the same (a run's checkpoints share one tokenizer; cdhpc.evals.packcache), so the host work is
paid once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdhpc.evals.aoa import (
    CdiData,
    curve_fitness,
    load_words,
    read_cdi,
    step_number,
    surprisal_json,
    surprisal_rows,
    word_requests,
    word_rows,
)
from cdhpc.evals.data import EvalDataError
from cdhpc.evals.packcache import PackCache

MIN_CHECKPOINTS = 3


@dataclass(frozen=True)
class AoaData:
    """The task's two files, read and checked before any model loads."""

    words: list[str]
    contexts: list[list[str]]
    cdi: CdiData


def load_task_data(files: list[Path]) -> AoaData:
    """cdi_childes.json (words in contexts) and cdi_human.csv (children's production data)."""
    by_name = {f.name: f for f in files}
    for name in ("cdi_childes.json", "cdi_human.csv"):
        if name not in by_name:
            raise EvalDataError(
                f"{files[0].parent}: no {name}; the aoa task reads cdi_childes.json and cdi_human.csv there"
            )
    words, contexts = load_words(by_name["cdi_childes.json"])
    return AoaData(words, contexts, read_cdi(by_name["cdi_human.csv"]))


def checkpoint_dirs(model_dir: Path, steps: list[int] | None = None) -> list[tuple[float, Path]]:
    """(step, folder) of the checkpoints under `model_dir`, by step: the folders step_N of `steps`,
    or every subfolder holding a config.json whose name has a step number (step_500, chck_10M)."""
    if not model_dir.is_dir():
        raise EvalDataError(f"{model_dir}: no such directory (aoa reads a folder of checkpoint folders)")
    if steps is not None:
        found = [(float(s), model_dir / f"step_{s}") for s in steps]
        missing = [str(p) for _, p in found if not (p / "config.json").is_file()]
        if missing:
            raise EvalDataError(f"aoa: checkpoint folder(s) missing: {', '.join(missing)}")
    else:
        found = sorted(
            (step_number(p.name), p)
            for p in model_dir.iterdir()
            if (p / "config.json").is_file() and step_number(p.name) is not None
        )
    if len(found) < MIN_CHECKPOINTS:
        raise EvalDataError(
            f"{model_dir}: aoa fits learning curves over a run's checkpoints and needs "
            f">= {MIN_CHECKPOINTS} checkpoint folders named by step (step_500, ...); "
            f"found {len(found)}"
        )
    return sorted(found)


def score_checkpoints(
    checkpoints: list[tuple[float, Path]], data: AoaData, options: Any, cache: PackCache | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per-word rows, summary fields and the official surprisal.json of one run's checkpoints.
    The requests are packed once per tokenizer (`cache`: the evaluation's pack cache)."""
    from cdhpc.evals.batches import prepare_pack, score_pack
    from cdhpc.evals.engine import context_limit, encode_requests
    from cdhpc.evals.loading import load_model

    requests = word_requests(data.words, data.contexts)
    cache = cache if cache is not None else PackCache(None, {"task": "aoa"})
    rows: list[dict[str, Any]] = []
    for step, folder in checkpoints:
        model, tokenizer = load_model(folder, options.device, options.dtype)
        limit = context_limit(model)
        pack = cache.get(
            folder,
            limit,
            lambda tokenizer=tokenizer, limit=limit: prepare_pack(
                *encode_requests(tokenizer, requests, options.scoring, max_tokens=limit), options.batch_size
            ),
        )
        scores = score_pack(model, pack, options.device)
        rows += surprisal_rows(int(step) if step == int(step) else step, data.words, data.contexts, scores)
        del model
    result = curve_fitness(rows, data.cdi)
    fields = {
        "score": result.fitness,
        "per_uid": {"aoa": result.fitness},
        "n_items": len(result.words),
        "metric": "pearson",
        "n_words_fitted": result.n_words,
        "p_value": result.p_value,
        "checkpoints": [s for s, _ in checkpoints],
    }
    parent = checkpoints[0][1].parent
    name = parent.parent.name if parent.name == "checkpoints" else parent.name  # a sweep run: its folder
    official = {"surprisal.json": surprisal_json(rows, name)}
    return word_rows(result), fields, official

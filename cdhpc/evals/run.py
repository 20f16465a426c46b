"""Running one task on one checkpoint (`evaluate_task`) and the `cdhpc eval` command (`main_eval`).

Order of work: validate the arguments and read the whole data set (a malformed file fails here,
before the model loads and before anything is written), score, then write the outputs atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cdhpc.evals import SCORING, TASK_NAMES, WUG_METRICS, get_task
from cdhpc.evals.data import EvalDataError, data_sha256, list_files
from cdhpc.evals.output import write_outputs
from cdhpc.evals.scoring import aoa_too_long, score_task
from cdhpc.evals.task import Task

log = logging.getLogger("cdhpc")


def _task_files(
    task: Task, data_dir: Path | None, fast: bool, heldout_dir: Path | None
) -> tuple[list[Path], Path]:
    """The files a task reads and the root their checksum paths are relative to."""
    if task.kind == "perplexity":
        if heldout_dir is None:
            raise ValueError("task 'perplexity' needs heldout_dir (--heldout DIR of <source>.txt)")
        return list_files(Path(heldout_dir), task.pattern), Path(heldout_dir)
    if data_dir is None:
        raise ValueError(f"task {task.name!r} needs data_dir (--data, the evaluation_data directory)")
    return list_files(task.data_dir(Path(data_dir), fast), task.pattern), Path(data_dir)


def _prepare(task: Task, files: list[Path]) -> Any:
    """Everything read from the data files, parsed and validated (no model needed)."""
    if task.kind == "choice":
        from cdhpc.evals.choice import load_items_at

        return load_items_at(task, files)
    if task.kind == "reading":
        from cdhpc.evals.reading import load_rows

        return load_rows(files[0], task.name)
    if task.kind == "aoa":
        from cdhpc.evals.aoa_run import load_task_data

        return load_task_data(files)
    return files


@dataclass(frozen=True)
class EvalOptions:
    """How a task is scored (see docs/evaluation.md); the defaults are the official pipeline's."""

    scoring: str = "official"
    wug_metric: str = "spearman"
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 64
    truncate: bool = False
    """A sentence-task candidate longer than the model's context (max_position_embeddings): an
    error naming the item (default), or with truncate cut from the left (engine.encode_requests),
    logged and counted in summary.json as n_truncated."""

    def check(self) -> None:
        """ValueError naming the option, the bad value and what is allowed."""
        from cdhpc.evals.loading import DTYPES

        for name, allowed in (("scoring", SCORING), ("wug_metric", WUG_METRICS), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: allowed are {', '.join(allowed)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size}: must be >= 1")


def evaluate_task(
    model_dir: Path,
    task: str,
    data_dir: Path | None,
    out_dir: Path,
    *,
    fast: bool = False,
    heldout_dir: Path | None = None,
    options: EvalOptions = EvalOptions(),
    steps: list[int] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Score the HF causal LM in `model_dir` on `task` (aoa: the checkpoint folders in
    `model_dir`, those of `steps` when given); write predictions.jsonl, the official files and
    summary.json (last) into `out_dir`. Returns the summary. `cache_dir`: where the tokenized and
    packed requests are kept for the next checkpoint with the same tokenizer (None: not kept;
    cdhpc.evals.packcache)."""
    from cdhpc.evals.packcache import PackCache

    spec = get_task(task)
    options.check()
    files, root = _task_files(spec, data_dir, fast, heldout_dir)
    if cache_dir is None:
        prepared = _prepare(spec, files)
        checksum = data_sha256(files, root)
    else:  # one job, several checkpoints: the data is parsed once (the bytes are hashed every time)
        from cdhpc.evals.data import check_size
        from cdhpc.evals.packcache import memo_data

        for f in files:
            check_size(f)  # before hashing: a huge file fails at once, as the parse would fail it
        checksum = data_sha256(files, root)
        key = (spec.name, spec.version, checksum, tuple(map(str, files)))  # paths: errors name them
        prepared = memo_data(key, partial(_prepare, spec, files))
    cache = PackCache(
        cache_dir,
        {
            "task": spec.name,
            "version": spec.version,
            "data_sha256": checksum,
            "scoring": options.scoring,
            "truncate": options.truncate,
            "batch_size": options.batch_size,
        },
    )
    if spec.kind == "aoa":
        from cdhpc.evals.aoa_run import checkpoint_dirs, score_checkpoints
        from cdhpc.evals.engine import ContextLengthError

        try:
            rows, fields, official = score_checkpoints(
                checkpoint_dirs(Path(model_dir), steps), prepared, options, cache
            )
        except ContextLengthError as err:
            raise EvalDataError(aoa_too_long(err, files, prepared)) from None
    else:
        from functools import cache as once

        from cdhpc.evals.loading import load_causal_lm, load_tokenizer

        model = load_causal_lm(Path(model_dir), options.device, options.dtype)
        tokenizer = once(partial(load_tokenizer, Path(model_dir)))  # only when a pack is built
        packs = partial(cache.get, Path(model_dir))
        rows, fields, official = score_task(spec, prepared, model, tokenizer, options, files, packs)
    if cache.directory is not None:
        log.info("%s: pack cache %s: %d read, %d built", spec.name, cache.directory, cache.hits, cache.builds)
    fields.setdefault("n_truncated", 0)  # candidates cut to the model's context (options.truncate)
    summary = {
        "task": spec.name,
        "version": spec.version,
        "data_sha256": checksum,
        **fields,
        "fast": fast,
        "model_dir": str(model_dir),
        "scoring": options.scoring,
        "dtype": options.dtype,
        "truncate": options.truncate,
        "files": [str(f.relative_to(root)) for f in files],
    }
    write_outputs(Path(out_dir), rows, official, summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdhpc eval",
        description="Evaluate any HF causal LM on the BabyLM 2025 zero-shot tasks; "
        "the defaults reproduce the official pipeline item for item (docs/evaluation.md).",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="HF causal LM directory (aoa: a folder of checkpoint folders named by step, e.g. step_500)",
    )
    p.add_argument("--tasks", required=True, help=f"comma-separated, from: {','.join(TASK_NAMES)}")
    p.add_argument("--data", type=Path, help="the evaluation_data directory (full_eval/, fast_eval/)")
    p.add_argument("--out", required=True, type=Path, help="output directory (one folder per task)")
    p.add_argument("--fast", action="store_true", help="use the fast_eval subsets")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--batch-size", type=int, default=64, help="packed rows (about 64 tokens each) per forward pass"
    )
    p.add_argument("--heldout", type=Path, help="held-out split directory (perplexity)")
    p.add_argument(
        "--scoring",
        default="official",
        choices=SCORING,
        help="official: the pipeline's tokens, BOS and reading rules (default); joint: ours",
    )
    p.add_argument(
        "--wug-metric",
        default="spearman",
        choices=WUG_METRICS,
        help="wug: Spearman's rho with the human ratio (official, default) or accuracy (the paper)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="weights and activations: float32 (as the official pipeline, default) or bfloat16",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep the tokenized and packed requests in this directory and reuse them for every "
        "checkpoint with the same tokenizer (default: not kept)",
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="a sentence-task candidate longer than the model's context (max_position_embeddings, "
        "special tokens included) is cut from the left, with a warning, and counted in "
        "summary.json as n_truncated; default: such an item is an error naming it",
    )
    return p


def main_eval(argv: list[str]) -> int:
    """`cdhpc eval --model DIR --tasks blimp,ewok --data EVAL_DIR --out DIR [...]`: evaluates
    each task into OUT/<task>/, prints one line per task; 2 on a user error."""
    args = _parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = EvalOptions(
        args.scoring, args.wug_metric, args.dtype, args.device, args.batch_size, args.truncate
    )
    try:
        for name in tasks:
            get_task(name)
        for name in tasks:
            s = evaluate_task(
                args.model,
                name,
                args.data,
                args.out / name,
                fast=args.fast,
                heldout_dir=args.heldout,
                options=options,
                cache_dir=args.cache,
            )
            cut = f"\ttruncated={s['n_truncated']}" if s["n_truncated"] else ""
            print(f"{name}\t{s['metric']}\t{s['score']:.4f}\tn={s['n_items']}{cut}")
    except (EvalDataError, ValueError, OSError) as err:
        print(f"cdhpc eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_eval(sys.argv[1:]))

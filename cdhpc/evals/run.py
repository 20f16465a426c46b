"""Running one task on one checkpoint (`evaluate_task`) and the `cdhpc eval` command (`main_eval`).

Order of work: validate the arguments and read the whole data set (a malformed file fails here,
before the model loads and before anything is written), score, then write the outputs atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cdhpc.evals import TASK_NAMES, get_task
from cdhpc.evals.data import EvalDataError, data_sha256, list_files
from cdhpc.evals.output import write_outputs
from cdhpc.evals.task import Task


WUG_METRICS = ("accuracy", "spearman")


def _task_files(task: Task, data_dir: Path | None, fast: bool,
                heldout_dir: Path | None) -> tuple[list[Path], Path]:
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
        from cdhpc.evals.choice import load_items

        return load_items(task, files)
    if task.kind == "reading":
        from cdhpc.evals.reading import load_rows

        return load_rows(files[0], task.name)
    return files


def _score(task: Task, prepared: Any, model: Any, tokenizer: Any, *, device: str,
           batch_size: int, wug_metric: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Prediction rows, summary fields and official files of one task."""
    from cdhpc.evals.engine import block_losses, score_candidates

    if task.kind == "choice":
        from cdhpc.evals.choice import item_requests, summarize_choice

        scores = score_candidates(model, tokenizer, item_requests(prepared),
                                  batch_size=batch_size, device=device)
        metric = wug_metric if task.name == "wug" else "accuracy"
        return summarize_choice(task, prepared, scores, metric)
    if task.kind == "reading":
        from cdhpc.evals.reading import reading_requests, summarize_reading

        rows, columns = prepared
        requests, word_idx, prev_idx = reading_requests(rows, task.name)
        scores = score_candidates(model, tokenizer, requests, batch_size=batch_size, device=device)
        return summarize_reading(task.name, rows, columns, scores, word_idx, prev_idx)
    import torch

    from cdhpc.evals.perplexity import MAX_BLOCK, cut_blocks, heldout_ids, summarize_perplexity

    block = min(MAX_BLOCK, int(model.config.max_position_embeddings))
    blocks = torch.tensor(cut_blocks(heldout_ids(tokenizer, prepared), block))
    losses = block_losses(model, blocks, batch_size=max(1, batch_size // 8), device=device)
    return summarize_perplexity(losses, blocks.shape[1])


def evaluate_task(model_dir: Path, task: str, data_dir: Path | None, out_dir: Path, *,
                  fast: bool = False, device: str = "cpu", batch_size: int = 64,
                  wug_metric: str = "accuracy", heldout_dir: Path | None = None) -> dict:
    """Score the HF causal LM in `model_dir` on `task`; write predictions.jsonl, the official
    predictions.json / report, and summary.json (last) into `out_dir`. Returns the summary."""
    spec = get_task(task)
    if wug_metric not in WUG_METRICS:
        raise ValueError(f"wug_metric {wug_metric!r}: allowed are {', '.join(WUG_METRICS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be >= 1")
    files, root = _task_files(spec, data_dir, fast, heldout_dir)
    prepared = _prepare(spec, files)
    from cdhpc.evals.engine import load_model

    model, tokenizer = load_model(Path(model_dir), device)
    rows, fields, official = _score(spec, prepared, model, tokenizer, device=device,
                                    batch_size=batch_size, wug_metric=wug_metric)
    summary = {"task": spec.name, "version": spec.version, "data_sha256": data_sha256(files, root),
               **fields, "fast": fast, "model_dir": str(model_dir),
               "files": [str(f.relative_to(root)) for f in files]}
    write_outputs(Path(out_dir), rows, official, summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdhpc eval", description="Evaluate one checkpoint.")
    p.add_argument("--model", required=True, type=Path, help="HF causal LM directory")
    p.add_argument("--tasks", required=True, help=f"comma-separated, from: {','.join(TASK_NAMES)}")
    p.add_argument("--data", type=Path, help="the evaluation_data directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (one folder per task)")
    p.add_argument("--fast", action="store_true", help="use the fast_eval subsets")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--batch-size", type=int, default=64, help="rows (items) per forward pass")
    p.add_argument("--heldout", type=Path, help="held-out split directory (perplexity)")
    p.add_argument("--wug-metric", default="accuracy", choices=WUG_METRICS)
    return p


def main_eval(argv: list[str]) -> int:
    """`cdhpc eval --model DIR --tasks blimp,ewok --data EVAL_DIR --out DIR [--fast] ...`:
    evaluates each task into OUT/<task>/, prints one line per task; 2 on a user error."""
    args = _parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        for name in tasks:
            get_task(name)
        for name in tasks:
            s = evaluate_task(args.model, name, args.data, args.out / name, fast=args.fast,
                              device=args.device, batch_size=args.batch_size,
                              wug_metric=args.wug_metric, heldout_dir=args.heldout)
            print(f"{name}\t{s['metric']}\t{s['score']:.4f}\tn={s['n_items']}")
    except (EvalDataError, ValueError, OSError) as err:
        print(f"cdhpc eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_eval(sys.argv[1:]))

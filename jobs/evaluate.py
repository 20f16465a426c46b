"""evaluate: one checkpoint x one task (aoa: one run's checkpoints), scored as the official
BabyLM 2025 pipeline does unless the sweep's eval section names another rule. The host work
(tokenizing and packing the task) is shared through the workdir's pack cache."""

from __future__ import annotations

from jobs import StepContext, StepResult
from jobs.prepare import corpus_dir


def run(ctx: StepContext) -> StepResult:
    import torch

    from cdhpc.evals.run import EvalOptions, evaluate_task
    from cdhpc.sweep.workdir import Workdir

    p = ctx.params
    checkpoints = ctx.input_dir("model") / "checkpoints"
    model_dir = checkpoints if p["task"] == "aoa" else checkpoints / f"step_{p['step']}"
    data_dir = ctx.input_dir("data") / "evaluation_data" if p["data_dir"] == "toy" else p["data_dir"]
    options = EvalOptions(
        scoring=p["scoring"],
        wug_metric=p.get("wug_metric", "spearman"),
        dtype=p["dtype"],
        device="cuda" if torch.cuda.is_available() else "cpu",
        batch_size=ctx.spec.options.get("batch_size", 64),
        truncate=p.get("truncate", False),
    )
    summary = evaluate_task(
        model_dir,
        p["task"],
        data_dir,
        ctx.out_dir,
        fast=p["set"] == "fast",
        heldout_dir=corpus_dir(ctx, "data") / "test",
        options=options,
        steps=p.get("steps"),
        cache_dir=Workdir(ctx.workdir).eval_cache,
    )
    row = {
        "run": p["run"],
        "method": p["method"],
        "seed": p["seed"],
        "step": p["step"],
        "task": p["task"],
        "score": summary["score"],
        "task_version": summary["version"],
        "data_sha256": summary["data_sha256"],
        "n_items": summary.get("n_items"),
        "path": str(ctx.out_dir.relative_to(ctx.workdir)),
    }
    return StepResult(metrics={"score": summary["score"]}, rows={"scores": [row]})

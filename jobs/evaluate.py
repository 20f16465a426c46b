"""evaluate: one checkpoint x one task, scored as the official BabyLM 2025 pipeline does."""

from __future__ import annotations

from jobs import StepContext, StepResult
from jobs.prepare import corpus_dir


def run(ctx: StepContext) -> StepResult:
    import torch

    from cdhpc.evals.run import evaluate_task

    p = ctx.params
    model_dir = ctx.input_dir("model") / "checkpoints" / f"step_{p['step']}"
    data_dir = ctx.input_dir("data") / "evaluation_data" if p["data_dir"] == "toy" else p["data_dir"]
    summary = evaluate_task(model_dir, p["task"], data_dir, ctx.out_dir, fast=p["set"] == "fast",
                            device="cuda" if torch.cuda.is_available() else "cpu",
                            batch_size=ctx.spec.options.get("batch_size", 64), wug_metric=p["wug_metric"],
                            heldout_dir=corpus_dir(ctx, "data") / "test")
    row = {"run": p["run"], "method": p["method"], "seed": p["seed"], "step": p["step"], "task": p["task"],
           "score": summary["score"], "task_version": summary["version"], "data_sha256": summary["data_sha256"],
           "n_items": summary.get("n_items"), "path": str(ctx.out_dir.relative_to(ctx.workdir))}
    return StepResult(metrics={"score": summary["score"]}, rows={"scores": [row]})

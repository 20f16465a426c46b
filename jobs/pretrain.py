"""pretrain: one run (baseline, small amateur, or retrained on a real/synthetic mix) with DeepSpeed.
Resumes from its last DeepSpeed checkpoint when requeued or re-launched."""

from __future__ import annotations

import logging
import shutil

from cdhpc.model import ModelPreset
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")


def train_spec(ctx: StepContext):
    from cdhpc.train import TrainSpec

    p, t = ctx.params, ctx.params["train"]
    return TrainSpec(preset=ModelPreset(**p["preset"]), vocab_size=p["vocab_size"], seed=p["seed"],
                     steps=t["steps"], checkpoint_every=t["checkpoint_every"], lr=t["lr"], min_lr=t["min_lr"],
                     weight_decay=t["weight_decay"], betas=tuple(t["betas"]), warmup_steps=t["warmup_steps"],
                     global_batch=t["global_batch"], micro_batch=t["micro_batch"], seq_len=t["seq_len"],
                     precision=t["precision"], deepspeed=t["deepspeed"], synthetic_share=p["synthetic_share"],
                     mix_rounding=p["rounding"], log_every=ctx.spec.options.get("log_every", 10),
                     val_batches=t["val_batches"])


def run(ctx: StepContext) -> StepResult:
    from cdhpc.train import train

    tok = ctx.input_dir("tokenizer")
    synthetic = ctx.input_dir("synthetic") / "tokens" if "synthetic" in ctx.spec.inputs else None
    result = train(train_spec(ctx), tokenizer_dir=tok / "tokenizer", train_array=tok / "tokens" / "train",
                   val_array=tok / "tokens" / "test", synthetic_array=synthetic, out_dir=ctx.out_dir, log=log.info,
                   stop_after=ctx.spec.options.get("stop_after"))
    if result["steps"] < ctx.params["train"]["steps"]:
        raise RuntimeError(f"stopped after step {result['steps']} of {ctx.params['train']['steps']} (stop_after)")
    shutil.rmtree(ctx.out_dir / "ds", ignore_errors=True)  # resume state is not needed once the run is done
    rows = [{"run": ctx.spec.name, "step": c["step"], "path": str((ctx.out_dir / "checkpoints" / f"step_{c['step']}").relative_to(ctx.workdir)),
             "val_loss": c["val_loss"], "val_ppl": c["val_ppl"]} for c in result["checkpoints"]]
    metrics = {k: result[k] for k in ("params", "tokens", "tokens_per_s", "mfu", "realised_synthetic_share", "device", "world_size")}
    return StepResult(outputs=[ctx.out_dir / "checkpoints"], metrics=metrics, rows={"checkpoints": rows})

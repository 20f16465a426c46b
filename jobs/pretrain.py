"""pretrain: one run (baseline, small amateur, or retrained on a real/synthetic mix) with DeepSpeed.
Resumes from its last DeepSpeed checkpoint when requeued or re-launched."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

from cdhpc.lm.model import ModelPreset
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")
# Continued by a resumed run (train() drops their lines past the resume step; TensorBoard's purge_step
# and W&B's step order hide a redone step's old events); removed with everything else otherwise.
TRAINING_LOGS = ("metrics.jsonl", "metrics.csv", "tensorboard", "wandb")


def train_spec(ctx: StepContext):
    from cdhpc.lm.train import TrainSpec

    p, t = ctx.params, ctx.params["train"]
    return TrainSpec(
        preset=ModelPreset(**p["preset"]),
        vocab_size=p["vocab_size"],
        seed=p["seed"],
        steps=t["steps"],
        checkpoint_every=t["checkpoint_every"],
        lr=t["lr"],
        min_lr=t["min_lr"],
        weight_decay=t["weight_decay"],
        betas=tuple(t["betas"]),
        warmup_steps=t["warmup_steps"],
        global_batch=t["global_batch"],
        micro_batch=t["micro_batch"],
        seq_len=t["seq_len"],
        precision=t["precision"],
        deepspeed=t["deepspeed"],
        synthetic_share=p["synthetic_share"],
        mix_rounding=p["rounding"],
        log_every=ctx.spec.options.get("log_every", 10),
        val_batches=t["val_batches"],
    )


def resumable(ctx: StepContext) -> list[Path]:
    """What a re-run resumes from: the DeepSpeed checkpoint ``ds/latest`` names, when every torch
    file in it passes its zip CRC-32 check, and the HF checkpoints written up to its step, when each
    is complete, and its training logs (metrics.jsonl, trackers' files). If one fails, nothing is kept
    and the run starts over (an HF checkpoint before the resume step could not be written again);
    later checkpoints, older tags and temp files go."""
    ds, t = ctx.out_dir / "ds", ctx.params["train"]
    step = verified_ds_step(ds)
    if step is None:
        return []
    hf = [
        ctx.out_dir / "checkpoints" / f"step_{s}"
        for s in range(1, step + 1)
        if s % t["checkpoint_every"] == 0 or s == t["steps"]
    ]
    broken = [p.name for p in hf if not hf_checkpoint_complete(p)]
    if broken:
        log.warning(
            "%s: %s missing or incomplete; not resuming from ds/step_%d", ctx.out_dir, ", ".join(broken), step
        )
        return []
    kept = [
        p for p in ds.iterdir() if p.name in ("latest", "progress.json", f"step_{step}") or p.suffix == ".py"
    ]
    return kept + hf + [p for name in TRAINING_LOGS if (p := ctx.out_dir / name).exists()]


def verified_ds_step(ds: Path) -> int | None:
    """The step of the DeepSpeed checkpoint ``ds/latest`` names if its files are intact (torch
    saves zip archives with a CRC-32 per record: a truncated or altered file fails), else None."""
    try:
        tag = (ds / "latest").read_text().strip()
    except OSError:
        return None
    files = sorted(f for f in (ds / tag).rglob("*") if f.is_file()) if tag.startswith("step_") else []
    if not tag[5:].isdigit() or not files:
        return None
    for f in files:
        try:
            with zipfile.ZipFile(f) as z:
                if z.testzip() is not None:
                    return None
        except Exception:  # noqa: BLE001 - whatever stops reading it back fails the check
            return None
    return int(tag[5:])


def hf_checkpoint_complete(path: Path) -> bool:
    """An HF checkpoint directory as train() renames it into place: readable config.json and
    val.json, and safetensors files exactly as long as their headers say."""
    try:
        for name in ("config.json", "val.json"):
            json.loads((path / name).read_text())
        weights = sorted(path.glob("*.safetensors"))
        return bool(weights) and all(safetensors_complete(w) for w in weights)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable or not as written
        return False


def safetensors_complete(path: Path) -> bool:
    """The file holds the 8-byte header length, the JSON header and every tensor's bytes it lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 + n:
            return False
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return size == 8 + n + end


def run(ctx: StepContext) -> StepResult:
    from cdhpc.lm.train import train

    tok = ctx.input_dir("tokenizer")
    synthetic = ctx.input_dir("synthetic") / "tokens" if "synthetic" in ctx.spec.inputs else None
    result = train(
        train_spec(ctx),
        tokenizer_dir=tok / "tokenizer",
        train_array=tok / "tokens" / "train",
        val_array=tok / "tokens" / "test",
        synthetic_array=synthetic,
        out_dir=ctx.out_dir,
        log=log.info,
        stop_after=ctx.spec.options.get("stop_after"),
        report_to=ctx.spec.options.get("report_to", []),
        run_info=run_info(ctx),
    )
    if result["steps"] < ctx.params["train"]["steps"]:
        raise RuntimeError(
            f"stopped after step {result['steps']} of {ctx.params['train']['steps']} (stop_after)"
        )
    shutil.rmtree(ctx.out_dir / "ds", ignore_errors=True)  # resume state is not needed once the run is done
    rows = [
        {
            "run": ctx.spec.name,
            "step": c["step"],
            "path": str((ctx.out_dir / "checkpoints" / f"step_{c['step']}").relative_to(ctx.workdir)),
            "val_loss": c["val_loss"],
            "val_ppl": c["val_ppl"],
        }
        for c in result["checkpoints"]
    ]
    metrics = {
        k: result[k]
        for k in (
            "params",
            "tokens",
            "tokens_per_s",
            "mfu",
            "matmul_utilisation",
            "realised_synthetic_share",
            "device",
            "world_size",
        )
        if k in result
    }
    # metrics.jsonl is final now: hashed with the checkpoints (the trackers' files are not outputs)
    return StepResult(
        outputs=[ctx.out_dir / "checkpoints", ctx.out_dir / "metrics.jsonl"],
        metrics=metrics,
        rows={"checkpoints": rows},
    )


def run_info(ctx: StepContext) -> dict:
    """What the trackers tag a run with: sweep (from the spec's options), run, method, seed, key."""
    p = ctx.params
    return {
        "sweep": ctx.spec.options.get("sweep"),
        "run": ctx.spec.name,
        "method": p["method"],
        "seed": p["seed"],
        "key": ctx.spec.key,
        "params": p,
    }

"""A pretrain run's checkpoints: HF directories ``out_dir/checkpoints/step_<N>`` (weights,
config, tokenizer, ``val.json``; written in a temp dir and renamed) and the latest DeepSpeed
checkpoint in ``out_dir/ds/`` (with ``progress.json``) that ``resume`` continues from bit-exactly.
Called by every rank of ``cdhpc.lm.train.train``; only rank 0 writes the HF directories."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdhpc.lm.train import TrainSpec


def save_hf(
    engine, spec: TrainSpec, step: int, rank: int, tokenizer_dir: Path, out_dir: Path, metrics: dict
) -> dict:
    """``out_dir/checkpoints/step_<step>``: written by rank 0 in a temp dir, then renamed."""
    import torch.distributed as dist

    from cdhpc.base.atomicio import follow_umask
    from cdhpc.base.thirdparty import zero3_state_dict

    stage3 = engine.zero_optimization_stage() == 3
    state = zero3_state_dict(engine) if stage3 else None
    final = out_dir / "checkpoints" / f"step_{step}"
    record = {"step": step, "path": str(final), **metrics}
    if rank == 0:
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(str(tmp), state_dict=state)
        for item in Path(tokenizer_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        # no absolute path inside: a workdir must stay movable and its bytes location-independent
        (tmp / "val.json").write_text(
            json.dumps({k: v for k, v in record.items() if k != "path"} | {"spec": asdict(spec)}, indent=2)
        )
        follow_umask(tmp)  # safetensors writes 0600: readable by the group while the run goes on
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    dist.barrier()
    return record


def save_ds(engine, ds_dir: Path, step: int, rank: int, world_size: int) -> None:
    """DeepSpeed checkpoint tagged ``step_<step>``; older tags are removed once it is complete."""
    import torch
    import torch.distributed as dist

    engine.save_checkpoint(
        str(ds_dir), tag=f"step_{step}", client_state={"cdhpc_step": step, "torch_rng": torch.get_rng_state()}
    )
    dist.barrier()
    if rank == 0:
        for old in ds_dir.glob("step_*"):
            if old.is_dir() and old.name != f"step_{step}":
                shutil.rmtree(old)
        progress = {"step": step, "world_size": world_size, "zero_stage": engine.zero_optimization_stage()}
        (ds_dir / "progress.json.tmp").write_text(json.dumps(progress))
        os.replace(ds_dir / "progress.json.tmp", ds_dir / "progress.json")
    dist.barrier()


def resume(engine, ds_dir: Path, world_size: int) -> int:
    """Load the latest DeepSpeed checkpoint if any; returns the optimizer step to continue from."""
    import torch

    if not (ds_dir / "latest").is_file():
        return 0
    progress_file = ds_dir / "progress.json"
    saved = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    if saved.get("zero_stage", 0) > 0 and saved.get("world_size") != world_size:
        raise RuntimeError(
            f"{progress_file}: ZeRO checkpoint written by {saved.get('world_size')} "
            f"ranks cannot resume on {world_size}; run with the same world size"
        )
    _, client = engine.load_checkpoint(str(ds_dir))
    torch.set_rng_state(client["torch_rng"])
    return int(client["cdhpc_step"])


def existing_checkpoints(out_dir: Path) -> list[dict]:
    records = [
        {**json.loads(p.read_text()), "path": str(p.parent)}
        for p in (out_dir / "checkpoints").glob("step_*/val.json")
    ]
    return sorted(({k: v for k, v in r.items() if k != "spec"} for r in records), key=lambda r: r["step"])

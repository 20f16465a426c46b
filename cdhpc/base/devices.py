"""Which GPUs a local job sees. submitit's local executor sets CUDA_VISIBLE_DEVICES to the first
`gpus_per_node` device numbers, so a job of a stage that asks for none gets "" and runs on the CPU
even on a GPU machine. Our single-task local jobs use what the launcher sees (docs/gpu.md: on a GPU
machine the tiny sweep runs there; `CUDA_VISIBLE_DEVICES=` keeps it on the CPU): the launcher hands
its own value to the job in LAUNCHER_GPUS, and the job puts it back before anything initialises
CUDA. A multi-task job asking for no GPU keeps "": its ranks are CPU ranks (gloo)."""

from __future__ import annotations

import json
import os

LAUNCHER_GPUS = "CDHPC_LAUNCHER_CUDA_VISIBLE_DEVICES"
"""JSON: the launcher's CUDA_VISIBLE_DEVICES, or null where it had none (every GPU visible)."""


def launcher_gpus() -> dict[str, str]:
    """The environment a local job of a stage asking for no GPU is started with (on top of the
    launcher's own): the launcher's CUDA_VISIBLE_DEVICES, to be restored by `restore_gpus`."""
    return {LAUNCHER_GPUS: json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES"))}


def restore_gpus() -> None:
    """In a job: CUDA_VISIBLE_DEVICES as the launcher had it (unset where it was unset), when
    the launcher handed it over (local jobs asking for no GPU); otherwise nothing changes (a
    SLURM job keeps what SLURM gave it)."""
    handed = os.environ.pop(LAUNCHER_GPUS, None)
    if handed is None or os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return
    value = json.loads(handed)
    if value is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(value)

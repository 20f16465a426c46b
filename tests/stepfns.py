"""Small real step functions for scheduler tests (importable by submitit's job processes).

Each call appends its step name to ``workdir/calls.log`` so tests can count executions.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import time

from cdhpc.base.atomicio import atomic_write_text
from jobs import StepContext, StepResult


def _count(ctx: StepContext) -> None:
    with open(ctx.workdir / "calls.log", "a") as f:  # O_APPEND: one line per call, atomic for short writes
        f.write(ctx.spec.name + "\n")


def add(ctx: StepContext) -> StepResult:
    """value = params.add + the values of every input; optional sleep, gate file and failure switch."""
    _count(ctx)
    total = ctx.params.get("add", 0)
    for role in ctx.spec.inputs:
        total += int((ctx.input_dir(role) / "value.txt").read_text())
    if ctx.params.get("sleep_s"):
        time.sleep(ctx.params["sleep_s"])
    gate = ctx.params.get("wait_for")  # hold the step until the test creates this file (at most 4 min)
    deadline = time.monotonic() + 240
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.2)
    once = ctx.params.get("fail_once_flag")
    if once and os.path.exists(once):
        os.unlink(once)
        raise RuntimeError("failing once on purpose")
    flag = ctx.params.get("fail_if_exists")
    if flag and os.path.exists(flag):
        raise RuntimeError(f"failing on purpose: {flag} exists")
    atomic_write_text(ctx.out_dir / "value.txt", str(total))
    if ctx.params.get("usr2_at_exit"):  # a time limit's signal arriving while the finished job exits
        atexit.register(_signal_self, signal.SIGUSR2, 3.0)
    return StepResult(
        metrics={"value": total},
        rows={"scores": [{"run": ctx.spec.name, "task": "t", "score": float(total)}]},
    )


def _signal_self(signum: int, linger_s: float) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(linger_s)  # Python runs a handler between instructions: give it the chance


def gpus_seen(ctx: StepContext) -> StepResult:
    """Writes this rank's CUDA_VISIBLE_DEVICES (JSON; null when unset) to workdir/gpus.<rank>.json
    (outside the output directory, which rank 0 cleans while the others may already write). Rank 0
    waits for every rank's file before it returns (its receipt ends the step; a real multi-task
    step's ranks meet at the process group's rendezvous instead)."""
    rank = os.environ.get("RANK", "0")
    seen = json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES"))
    atomic_write_text(ctx.workdir / f"gpus.{rank}.json", seen)
    if rank == "0":
        files = [ctx.workdir / f"gpus.{r}.json" for r in range(int(os.environ.get("WORLD_SIZE", "1")))]
        deadline = time.time() + 120
        while not all(f.exists() for f in files):
            if time.time() > deadline:
                raise TimeoutError(f"ranks did not all write: {files}")
            time.sleep(0.05)
        atomic_write_text(ctx.out_dir / "gpus.json", seen)  # the step's output
    return StepResult()

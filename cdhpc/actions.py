"""Actions on a running sweep, shared by ``cdhpc cancel|retry`` and the terminal UI: cancel the
jobs of chosen steps (local or SLURM), and the launch command that retries failed steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cdhpc.status import Snapshot

LIVE = ("running", "queued")


def cancel_steps(snap: Snapshot, keys: list[str]) -> list[str]:
    """Cancel the live jobs of the given steps: SIGINT to a local job's controller pid (it stops
    its step), `scancel` for a SLURM job; every job record of a cancelled job is marked
    CANCELLED. Returns one message per job."""
    from cdhpc.receipts import atomic_write_json
    from cdhpc.scheduler import pid_alive

    def job_of(j: Any) -> tuple[str, str]:  # one SLURM array element is one job
        ref = str(j["job_id"]) if j["array_index"] is None else f"{j['job_id']}_{j['array_index']}"
        return j["executor"], ref

    by_job: dict[tuple[str, str], list[dict]] = {}
    for key in keys:
        j = snap.jobs.get(key)
        if j is not None and snap.states.get(key) in LIVE:
            by_job.setdefault(job_of(j), []).append(j)
    for job, rows in by_job.items():  # a packed job also runs steps not asked for
        rows += [j for k, j in snap.jobs.items() if job_of(j) == job and k not in keys and snap.states.get(k) in LIVE]
    messages = []
    for (executor, job_id), rows in by_job.items():
        if executor == "local":
            if pid_alive(job_id):
                os.kill(int(job_id), signal.SIGINT)
        else:
            subprocess.run(["scancel", job_id], check=False, capture_output=True)
        for j in rows:
            path = snap.workdir / j["path"]
            rec = json.loads(path.read_text())
            rec.update(state="CANCELLED", updated=time.time())
            atomic_write_json(path, rec)
        messages.append(f"cancelled {executor} job {job_id} ({len(rows)} step(s))")
    return messages


def retry_command(workdir: Path, verbose: bool = False) -> list[str]:
    """Pure: the launch that retries failed steps: the workdir's resolved config, pinned to this
    workdir (so a moved workdir is not confused with where it was created). That launcher takes
    the workdir's lock itself; the caller must not hold it."""
    cmd = [sys.executable, "-m", "cdhpc.launch", str(workdir / "sweep.resolved.yaml"), f"workdir={workdir}"]
    return cmd + ["--verbose"] if verbose else cmd

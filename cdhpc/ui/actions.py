"""Actions on a running sweep, shared by ``cdhpc cancel|retry`` and the terminal UI: cancel the
jobs of chosen steps (local or SLURM), and the launch command that retries failed steps."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from cdhpc.sweep.stepstate import QUEUED, RUNNING
from cdhpc.sweep.workdir import Workdir
from cdhpc.ui.status import Snapshot

LIVE = (RUNNING, QUEUED)


SCANCEL_BATCH = 1000  # job ids per scancel call: one process per batch, not per job


def job_of(j: Any) -> tuple[str, str]:
    """Pure: (executor, job) of a job record; one SLURM array element is one job."""
    ref = str(j["job_id"]) if j["array_index"] is None else f"{j['job_id']}_{j['array_index']}"
    return j["executor"], ref


def scancel_ids(chosen: set[str], live_elements: dict[str, int]) -> list[str]:
    """Pure: the ids to give scancel for the chosen SLURM jobs: an array's own id when every live
    element of it is chosen (one id instead of thousands), its elements otherwise."""
    by_array: dict[str, list[str]] = {}
    for ref in chosen:
        by_array.setdefault(ref.split("_")[0], []).append(ref)
    ids = []
    for array, refs in sorted(by_array.items()):
        whole = "_" in refs[0] and len(refs) == live_elements.get(array, 0)
        ids += [array] if whole else sorted(refs)
    return ids


def cancel_steps(snap: Snapshot, keys: list[str]) -> list[str]:
    """Cancel the live jobs of the given steps (and so also the steps packed into those jobs):
    SIGINT to a local job's controller pid (it stops its step) and its records marked CANCELLED
    at once; `scancel` for SLURM jobs, batched, whole arrays by their own id, and their records
    left to the next poll, which reads CANCELLED from sacct/squeue. Linear in the number of job
    records. Returns one message per local job and one line for all SLURM jobs."""
    from cdhpc.executors.scheduler import pid_alive, stop_local_job
    from cdhpc.sweep.jobrecords import update_job_record

    members: dict[tuple[str, str], list[dict]] = {}  # every live job -> its live records
    for k, j in snap.jobs.items():
        if snap.states.get(k) in LIVE:
            members.setdefault(job_of(j), []).append(j)
    chosen = {job_of(snap.jobs[k]) for k in keys if k in snap.jobs and snap.states.get(k) in LIVE}
    messages = []
    for executor, job_id in sorted(chosen):
        if executor == "local":
            if pid_alive(job_id):
                stop_local_job(int(job_id))
            for j in members[executor, job_id]:
                update_job_record(snap.workdir / j["path"], state="CANCELLED", updated=time.time())
            messages.append(f"cancelled local job {job_id} ({len(members[executor, job_id])} step(s))")
    slurm = {job_id for executor, job_id in chosen if executor == "slurm"}
    if slurm:
        live_elements: dict[str, int] = {}
        for executor, job_id in members:
            if executor == "slurm" and "_" in job_id:
                array = job_id.split("_")[0]
                live_elements[array] = live_elements.get(array, 0) + 1
        ids = scancel_ids(slurm, live_elements)
        for i in range(0, len(ids), SCANCEL_BATCH):
            subprocess.run(["scancel", *ids[i : i + SCANCEL_BATCH]], check=False, capture_output=True)
        n = sum(len(members["slurm", job_id]) for job_id in slurm)
        what = (
            f"slurm job {ids[0]}" if len(slurm) == 1 else f"{len(slurm)} slurm jobs ({len(ids)} scancel ids)"
        )
        messages.append(f"cancelled {what} ({n} step(s)); status shows them once SLURM reports it")
        messages += cancel_continuation(snap.workdir)
    return messages


def cancel_continuation(workdir: Path) -> list[str]:
    """scancel the sweep's wave continuation (cdhpc.executors.waves), so no later wave is submitted after a
    cancel; the record keeps the wave and names the cancel. A launch starts the waves again."""
    from cdhpc.base.atomicio import atomic_write_json
    from cdhpc.executors.waves import read_waves

    doc = read_waves(workdir)
    if not doc or not doc.get("continuation"):
        return []
    subprocess.run(["scancel", str(doc["continuation"])], check=False, capture_output=True)
    atomic_write_json(
        Workdir(workdir).waves,
        {
            **doc,
            "continuation": None,
            "note": f"continuation {doc['continuation']} cancelled by cdhpc cancel",
        },
    )
    return [
        f"cancelled the continuation job {doc['continuation']}: no further wave is submitted until a launch"
    ]


def retry_command(workdir: Path, verbose: bool = False) -> list[str]:
    """Pure: the launch that retries failed steps: the workdir's resolved config, pinned to this
    workdir (so a moved workdir is not confused with where it was created). That launcher takes
    the workdir's lock itself; the caller must not hold it."""
    return Workdir(workdir).relaunch_command(*(["--verbose"] if verbose else []))


def start_retry(workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Start `retry_command` in the background, in its own session (it outlives this UI), with
    its output in workdir/logs/retry-<unix time>.log. Returns the process and the log path."""
    import cdhpc

    log = Workdir(workdir).retry_log(int(time.time()))
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(cdhpc.__file__).resolve().parent.parent)  # where `cdhpc` and `jobs` import from
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            retry_command(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=workdir,
        )
    return proc, log

"""SLURM's view of the jobs: sacct/squeue answers parsed (pure), one poll for every live job
record (`refresh_job_records`, used by the SLURM launch and `cdhpc status`), and jobs found by
their unique name (`find_jobs_by_name`, how a launch adopts a job a killed launcher submitted)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cdhpc.executors.sbatch import JobRef
from cdhpc.sweep.jobrecords import update_job_record
from cdhpc.sweep.stepstate import LIVE_JOB_STATES  # sacct/squeue states of a job that may still run

LEFT_QUEUE = "LEFT_QUEUE"  # not listed by squeue any more and no accounting to say how it ended


# ----------------------------------------------------------------------------- pure: states
def canonical_state(raw: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'OUT_OF_MEMORY' stays."""
    return raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"


def expand_job_id(text: str) -> list[str]:
    """Pure: '123_[0-2,5%4]' -> ['123_0', '123_1', '123_2', '123_5']; anything else unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", text)
    if not m:
        return [text]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_states(text: str) -> dict[str, str]:
    """Pure: 'JobID|State' lines (sacct -P, or squeue -o '%i|%T') -> job or element -> state.
    The last line of a job wins (sacct lists a requeued job's earlier runs first); a line of
    one element wins over the line of a pending range (sacct prints '3_[0-2%2]|PENDING' for an
    array whose elements 3_0 and 3_1 already run)."""
    single, ranges = {}, {}
    for line in text.splitlines():
        job, sep, state = line.strip().partition("|")
        if sep and "." not in job:
            for j in expand_job_id(job):
                (ranges if "[" in job else single)[j] = canonical_state(state.split("|")[0])
    return ranges | single


def record_state(
    rec: dict, answer: dict[str, str], complete: bool, now: float, grace_s: float = 120.0
) -> str:
    """Pure: the new state of a live job record given a poll's answer. `complete`: the answer
    lists every job still known to SLURM (squeue was asked), so a job it omits has left the
    queue; without squeue's word a job missing from sacct's answer may only be lagging, and is
    declared gone after `grace_s` more. No job is declared gone within `grace_s` of its
    submission (an array being split into elements can be missing from both for a moment)."""
    ref = str(JobRef(rec["job_id"], rec.get("array_index")))
    state = answer.get(ref) or (answer.get(rec["job_id"]) if rec.get("array_index") is None else None)
    if state is not None:
        return state
    age_s = now - (rec.get("submitted") or now)
    if age_s > grace_s and (complete or age_s > 2 * grace_s):
        return LEFT_QUEUE
    return rec["state"]


# ----------------------------------------------------------------------------- shell: polling
def run_slurm(cmd: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    """A SLURM command (sacct, squeue, scancel), its output captured."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def _ask(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return run_slurm(cmd)
    except (OSError, subprocess.TimeoutExpired):
        return None


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """What squeue knows of the given jobs (finished ones too, for MinJobAge); None if it fails."""
    done = _ask(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(sorted(set(job_ids)))])
    if done is None:
        return None
    if done.returncode:
        return {} if "Invalid job id" in done.stderr else None  # every job has left squeue's memory
    return parse_states(done.stdout)


def query_states(job_ids: list[str], wanted: list[str] = ()) -> tuple[dict[str, str], bool]:
    """One sacct call for all the given jobs; squeue where accounting is off or down, and for
    the jobs sacct does not list (slurmdbd lags the controller, e.g. while an array's first
    elements start). `wanted`: the jobs and elements asked about. Returns (state by job or
    element, whether a job missing from the answer has left the queue, in the sense of
    record_state)."""
    done = _ask(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))])
    answer = parse_states(done.stdout) if done is not None and done.returncode == 0 else None
    if answer is not None:
        # an array sacct has not split into elements yet is one line under the array's id,
        # whose state is not its elements' (PENDING while they run): ask squeue for those
        missing = [w for w in wanted if w not in answer]
        if not missing:
            return answer, False
        queued = squeue_states([w.split("_")[0] for w in missing])
        return (answer, False) if queued is None else (queued | answer, True)
    queued = squeue_states(job_ids)
    if queued is None:
        raise RuntimeError(
            f"neither sacct nor squeue answers ({done.stderr.strip() if done is not None else 'not found'})"
        )
    return queued, True


def refresh_job_records(workdir: Path, records: Iterable[Any]) -> int:
    """Poll SLURM once for every live slurm job record (manifest rows or dicts with a `path`)
    and rewrite the records whose state changed. Returns how many changed."""
    live = [dict(r) for r in records if r["executor"] == "slurm" and r["state"] in LIVE_JOB_STATES]
    if not live:
        return 0
    answer, complete = query_states(
        [r["job_id"] for r in live], [str(JobRef(r["job_id"], r["array_index"])) for r in live]
    )
    now, changed = time.time(), 0
    for r in live:
        state = record_state(r, answer, complete, now)
        if state != r["state"]:
            update_job_record(Path(workdir) / r["path"], state=state, updated=now)
            changed += 1
    return changed


def find_jobs_by_name(names: list[str]) -> dict[str, list[str]]:
    """Job ids (array elements expanded) SLURM knows under each name: squeue, then sacct."""
    if not names:
        return {}
    out: dict[str, list[str]] = {}
    for cmd in (
        ["squeue", "-h", "-r", "-t", "all", "-o", "%j|%i", "--name", ",".join(names)],
        ["sacct", "-n", "-P", "-X", "-S", "now-30days", "-o", "JobName,JobID", "--name", ",".join(names)],
    ):
        done = run_slurm(cmd)
        for line in done.stdout.splitlines() if done.returncode == 0 else ():
            name, _, job = line.strip().partition("|")
            if name in names:
                out.setdefault(name, []).extend(j for j in expand_job_id(job) if j not in out.get(name, []))
        if out:
            break
    return out

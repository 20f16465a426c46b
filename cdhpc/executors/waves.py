"""Sweeps larger than the cluster's submit limits run in waves (docs: README, "Waves").

A launch whose arrays do not fit the budget (`cdhpc.executors.slurm_limits`) submits the longest prefix of
them in dependency order that fits in the budget minus one, plus one continuation job
``cdhpc.<sweep>.continue`` (1 CPU, 2 GB, 10 minutes) that waits (``afterany``) for the wave and
then runs the same launch again with ``--missing-only``: that relaunch submits the next wave and
its own continuation, until nothing is missing. A step that failed is not submitted again by a
continuation (that would retry it forever); the chain ends when only failures are left, and the
user's own launch retries them.

The continuation is a submitit job like the steps (its sbatch script is checked by
`check_sbatch_script`) whose Python callable runs the launcher as an argument list: no value of
the config passes through a shell. ``workdir/waves.json`` records the waves (status shows it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cdhpc.sweep.workdir import WAVES_FILE, Workdir  # noqa: F401 (WAVES_FILE re-exported)

log = logging.getLogger("cdhpc")

CONTINUE_MINUTES = 10
CONTINUE_MEM = "2048M"  # the launcher loads the manifest: ~300 MB at 46k steps, measured by cdhpc.bench
MAX_AFTER_IDS = 200  # afterany ids of one continuation; beyond, the last arrays in dependency order
OWN_JOB_ENV = "CDHPC_CONTINUATION_JOB"  # set by a continuation for the launch it runs: never cancel yourself
LOCK_RETRIES = 5  # a continuation that finds the workdir's lock held waits for it this many times


# ----------------------------------------------------------------------------- pure: the split
def cut_wave(arrays: list, room: int | None) -> tuple[list, int]:
    """Pure: the longest prefix of `arrays` (dependency order, as `plan_arrays` returns them)
    with at most `room` jobs; the first array that does not fit is cut at a pack boundary to fill
    the room (an array of MaxArraySize - 1 elements must pass a budget below it). A prefix of a
    dependency order holds the upstream arrays of each of its arrays. Returns (the wave, the
    steps left for later waves). `room` None: everything."""
    if room is None:
        return arrays, 0
    wave, used = [], 0
    for i, a in enumerate(arrays):
        n = len(a.packs)
        if used + n > room:
            if room - used > 0:
                wave.append(type(a)(a.stage, a.packs[: room - used], a.after, a.resources, a.ref))
            left = sum(len(p) for p in a.packs[max(0, room - used) :]) + sum(
                len(b.keys) for b in arrays[i + 1 :]
            )
            return wave, left
        wave.append(a)
        used += n
    return wave, 0


def wave_room(arrays: list, budget: int | None) -> int | None:
    """Pure: the jobs of step arrays this launch may submit: everything when all of it fits the
    budget, else the budget minus the continuation's job."""
    if budget is None or sum(len(a.packs) for a in arrays) <= budget:
        return None
    return max(0, budget - 1)


def after_ids(wave_ids: list[str], live_ids: list[str], limit: int = MAX_AFTER_IDS) -> list[str]:
    """Pure: the jobs the continuation waits for: this wave's arrays and the sweep's other live
    jobs (their slots are what the next wave needs), deduplicated; past `limit`, the last ones
    (the wave's deepest arrays end after their upstream ones, and the relaunch waits with afterok
    for whatever is still live, so a continuation that starts early is only a smaller wave)."""
    ids = list(dict.fromkeys([*live_ids, *wave_ids]))
    return ids[-limit:]


def wave_line(doc: dict | None) -> str | None:
    """Pure: what status shows of `waves.json` (None when the sweep never needed waves)."""
    if not doc:
        return None
    head = f"wave {doc['wave']}"
    if doc.get("continuation"):
        after = doc.get("after") or []
        shown = " ".join(after[-3:]) + (f" (+{len(after) - 3})" if len(after) > 3 else "")
        waiting = f"{doc.get('left', '?')} step(s) wait for the next wave"
        return f"{head}: {waiting}, job {doc['continuation']} after job(s) {shown}"
    return f"{head}: {doc.get('note') or 'last wave submitted'}"


def read_waves(workdir: Path) -> dict | None:
    import json

    try:
        return json.loads(Workdir(workdir).waves.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the job
class ContinueSweep:
    """The continuation job's callable (pickled by submitit): the sweep's launch, again."""

    def __init__(self, workdir: str, argv: list[str] | None = None):
        self.workdir = workdir
        self.argv = argv  # the launch to run, as arguments (no shell); None: the workdir's sweep

    def command(self) -> list[str]:
        return self.argv or Workdir(self.workdir).relaunch_command("--missing-only")

    def __call__(self) -> int:
        # sbatch from inside a job would pass this job's SLURM_* settings on to the next wave
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_")) or k == "SLURM_CONF"
        }
        env[OWN_JOB_ENV] = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")
        for attempt in range(LOCK_RETRIES + 1):
            done = subprocess.run(self.command(), env=env, capture_output=True, text=True)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            if done.returncode == 0:
                return 0
            if "is in use by" not in done.stderr or attempt == LOCK_RETRIES:
                break
            time.sleep(30)  # a user's launch holds the workdir: it finishes in seconds to minutes
        # the job ends FAILED (sacct shows it; its log has the launch's output): no next wave until a launch
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        note_failed(
            Path(self.workdir), env[OWN_JOB_ENV], f"the sweep's launch exited {done.returncode}: {last}"
        )
        raise RuntimeError(f"the sweep's launch exited {done.returncode}: {done.stderr.strip()[-500:]}")


def note_failed(workdir: Path, job_id: str, why: str) -> None:
    """A continuation whose launch failed says so in waves.json (status shows it instead of a
    next wave that will not come), unless a later launch has replaced it meanwhile."""
    from cdhpc.base.atomicio import atomic_write_json

    doc = read_waves(workdir)
    if doc and str(doc.get("continuation")) == job_id:
        atomic_write_json(
            Workdir(workdir).waves,
            {**doc, "continuation": None, "note": f"continuation job {job_id} failed ({why}); launch again"},
        )


def continuation_parameters(profile: Any, sweep: str, after: list[str], begin_s: int = 0) -> dict[str, Any]:
    """Pure: submitit parameters of the continuation job: the profile's partition, account and
    QOS (values checked when the profile loaded), 1 CPU, small memory, a short time limit."""
    params: dict[str, Any] = {
        "job_name": f"cdhpc.{sweep}.continue",
        "time": CONTINUE_MINUTES,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 1,
        "mem": CONTINUE_MEM,
        "signal_delay_s": 30,
        "additional_parameters": {},
    }
    for key in ("partition", "account", "qos"):
        if getattr(profile, key, None):
            params[key] = getattr(profile, key)
    if after:
        params["dependency"] = "afterany:" + ":".join(after)
    if begin_s:
        params["additional_parameters"]["begin"] = f"now+{int(begin_s)}"
    return params


def submit_continuation(
    workdir: Path, profile: Any, sweep: str, after: list[str], begin_s: int = 0, argv: list[str] | None = None
) -> str:
    """sbatch the continuation (script checked first); returns its job id."""
    import submitit

    from cdhpc.base.thirdparty import executor_command
    from cdhpc.executors.sbatch import check_sbatch_script, job_name, sbatch_script

    job_name(sweep, "continue", [], "")  # raises UnsafeSbatch for a sweep name that cannot be a job name
    params = continuation_parameters(profile, sweep, after, begin_s)
    folder = Workdir(workdir).continuation_logs
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    executor.update_parameters(**params)
    check_sbatch_script(
        sbatch_script(executor.parameters, executor.folder, 1, executor_command(executor)),
        params,
        params["job_name"],
    )
    return str(executor.submit(ContinueSweep(str(workdir), argv)).job_id)


def cancel_old(doc: dict | None) -> None:
    """scancel the previous continuation, unless it is the job running this launch."""
    old = (doc or {}).get("continuation")
    if old and old != os.environ.get(OWN_JOB_ENV):
        subprocess.run(["scancel", str(old)], capture_output=True, check=False)


def next_wave(
    workdir: Path, profile: Any, sweep: str, sub: Any, live_ids: list[str], argv: list[str] | None = None
) -> dict | None:
    """After a launch's submission: when steps are left (`sub.left`), submit the continuation
    (after this wave and the sweep's live jobs; with nothing to wait for, in 10 minutes); record
    the wave in waves.json; cancel the continuation the new one replaces. Returns the record
    (None for a sweep that never needed waves)."""
    old = read_waves(workdir)
    if not sub.left and not old:
        return None
    doc: dict[str, Any] = {
        "wave": max(1, (old or {}).get("wave", 0) + (1 if sub.jobs else 0)),
        "left": sub.left,
        "updated": time.time(),
        "continuation": None,
        "history": (old or {}).get("history", []),
    }
    cancel_old(old)
    if sub.left:
        after = after_ids(sub.job_ids, live_ids)
        doc["continuation"] = submit_continuation(workdir, profile, sweep, after, 0 if after else 600, argv)
        doc["after"] = after
        log.info(
            "wave %d: %d step(s) left for the next wave; continuation job %s runs the launch again after %s",
            doc["wave"],
            sub.left,
            doc["continuation"],
            f"job(s) {' '.join(after[-5:])}" if after else "10 minutes",
        )
    else:
        doc["note"] = "last wave submitted" if sub.jobs or not old.get("note") else old["note"]
    # one entry a launch: what it submitted and the continuation it left (the waves' story, for status and
    # tests)
    doc["history"] = [
        *doc["history"],
        {
            "wave": doc["wave"],
            "jobs": sub.jobs,
            "steps": sub.steps,
            "left": sub.left,
            "continuation": doc["continuation"],
            "by": os.environ.get(OWN_JOB_ENV) or None,
            "at": doc["updated"],
        },
    ]
    from cdhpc.base.atomicio import (
        atomic_write_json,  # not at import: status --once reads waves without pydantic
    )

    atomic_write_json(Workdir(workdir).waves, doc)
    return doc

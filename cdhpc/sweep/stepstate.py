"""The one rule for "what state is this step in?": a receipt is the proof of success, its outputs
must still be intact, and a job that left the queue without one failed. ``step_states`` applies it
to a plan (the launcher, ``--dry-run``) or to step keys with an intactness cache (``cdhpc status``,
the terminal UI); ``cdhpc.executors.scheduler`` re-exports it. No plan, config or pydantic import here, so
``cdhpc status --once`` starts fast."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from functools import partial
from itertools import compress, count
from operator import attrgetter, itemgetter, ne
from pathlib import Path
from typing import Any

log = logging.getLogger("cdhpc")

DONE, FAILED, RUNNING, QUEUED, MISSING, BLOCKED = "done", "failed", "running", "queued", "missing", "blocked"
LIVE_JOB_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
)
QUEUED_JOB_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")
_LIVE = frozenset(LIVE_JOB_STATES)  # membership tests, once per step


def classify(receipt: Any | None, outputs: Any | None, job: Any | None, alive: bool) -> str:
    """Pure: the state of one step from its receipt row, its recorded outputs' integrity (None
    when not checked or changed; anything else when intact) and its job record. A receipt is the
    proof of success; a job that left the queue without one failed."""
    if receipt is not None and receipt["status"] == "ok" and outputs is not None:
        return DONE
    if job is not None and job["state"] in _LIVE and alive:
        return QUEUED if job["state"] in QUEUED_JOB_STATES else RUNNING
    if receipt is not None or job is not None:
        return FAILED
    return MISSING


def pid_alive(job_id: str | None) -> bool:
    """A local job's controller is still running (and is a submitit controller, not a reused pid)."""
    if not job_id or not job_id.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes()
        stat = Path(f"/proc/{job_id}/stat").read_text()
    except OSError:
        return False
    return b"submitit" in cmdline and ") Z " not in stat


def job_alive(job: Any | None) -> bool:
    """A job record in a live state whose job still exists: a local controller pid that runs, or
    a SLURM job (its record is refreshed from sacct/squeue before states are computed)."""
    if job is None or job["state"] not in _LIVE:
        return False
    return job["executor"] != "local" or pid_alive(job["job_id"])


def output_ok(root: str, path: str, sha256: str, size: int, mtime_ns: int, rehash: bool = False) -> bool:
    """One recorded output (path relative to `root`) still holds what its receipt says. Unchanged
    size and mtime are trusted (as git and make do) unless `rehash`; anything else is re-hashed."""
    full = path if path.startswith("/") else f"{root}/{path}"  # os.path.join's answer, without its cost
    try:
        st = os.stat(full)
    except FileNotFoundError:
        return False
    if st.st_size != size:
        return False
    if not rehash and st.st_mtime_ns == mtime_ns:
        return True
    from cdhpc.base.atomicio import sha256_file  # only to re-hash

    return sha256_file(Path(full)) == sha256


def step_done(workdir: str | os.PathLike, stage: str, name: str, key: str) -> bool:
    """The same rule read from the step's receipt file, for the job side (a requeued job skips the
    steps it finished; the local executor checks a job's steps when it ends): an ok receipt for
    this exact key whose recorded outputs are intact."""
    from cdhpc.sweep.receipts import ReceiptError, read_receipt, receipt_path  # pydantic: not for status

    try:
        r = read_receipt(receipt_path(workdir, stage, name, key))
    except ReceiptError:
        return False
    root = str(workdir)
    return (
        r.status == "ok"
        and r.key == key
        and all(output_ok(root, o.path, o.sha256, o.bytes, o.mtime_ns) for o in r.outputs)
    )


def outputs_intact(root: str, outputs: Iterable[Any], rehash: bool = False) -> bool:
    """A step's recorded outputs (rows or dicts: path, sha256, bytes, mtime_ns) all still hold what
    its receipt says: one os.stat each, re-hashed only where the mtime changed (or all: `rehash`)."""
    return all(output_ok(root, o["path"], o["sha256"], o["bytes"], o["mtime_ns"], rehash) for o in outputs)


def outputs_intact_by_key(root: str, rows: Iterable[tuple], rehash: bool = False) -> dict[str, bool]:
    """`outputs_intact` of many steps in one pass over (key, path, sha256, bytes, mtime_ns) rows:
    key -> intact, for the keys that have rows (the status UI's cache, filled in bulk). Only the
    rows `moved_outputs` finds go through `_output_ok` (re-hashed there when only the mtime
    moved), so the rule is that one; `rehash`: every row does."""
    rows = rows if isinstance(rows, list) else list(rows)
    intact = dict.fromkeys(map(itemgetter(0), rows), True)
    paths, stamps = list(map(itemgetter(1), rows)), map(itemgetter(3, 4), rows)
    todo = range(len(rows)) if rehash else moved_outputs(root, paths, stamps)
    for i in todo:
        key, path, sha256, size, mtime_ns = rows[i]
        if intact[key]:
            intact[key] = output_ok(root, path, sha256, size, mtime_ns, rehash)
    return intact


def moved_outputs(root: str, paths: list[str], stamps: Iterable[tuple[int, int]]) -> list[int]:
    """Indices of the outputs (paths relative to `root`, or absolute) whose file is missing or no
    longer has its recorded (bytes, mtime_ns): every other one is intact without a re-hash. One
    os.stat each, by a C-level map (no Python frame per file)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:  # a relative path is looked up from `root` (os.path.join's answer), an absolute one as it is
        stat = partial(os.stat, dir_fd=fd)
        try:
            got = list(map(_SIZE_MTIME, map(stat, paths)))
        except FileNotFoundError:  # then one at a time
            got = [_size_mtime(stat, p) for p in paths]
    finally:
        os.close(fd)
    return list(compress(count(), map(ne, got, stamps)))


_SIZE_MTIME = attrgetter("st_size", "st_mtime_ns")


def _size_mtime(stat: Callable[[str], os.stat_result], path: str) -> tuple[int, int] | None:
    try:
        return _SIZE_MTIME(stat(path))
    except FileNotFoundError:
        return None


def step_states(
    workdir: Path,
    plan: Any,
    receipts: dict[str, Any],
    jobs: dict[str, Any],
    outputs_of: Callable[[str], list[Any]],
    rehash: bool = False,
    intact: dict[str, bool] | None = None,
) -> dict[str, str]:
    """State of every planned step (a Plan, or step keys) by `classify`; done steps have every
    output still intact (re-hashed where an mtime changed, or all with `rehash`). `intact` is the
    status UI's cache (key -> outputs intact at the last check): steps it holds are not checked
    again, the others are filled in, and nothing is logged; without it, each done step whose
    outputs changed is logged (a launch runs it again)."""
    root, checked = str(workdir), {} if intact is None else intact
    keys = [s.key for s in plan.steps] if hasattr(plan, "steps") else plan
    states = {}
    for key in keys:
        r, j = receipts.get(key), jobs.get(key)
        good = None
        if r is not None and r["status"] == "ok":
            if key not in checked:
                checked[key] = outputs_intact(root, outputs_of(key), rehash)
                if intact is None and not checked[key]:
                    log.warning(
                        "step %s/%s: outputs changed since its receipt; it will run again",
                        r["stage"],
                        r["name"],
                    )
            good = checked[key] or None
        states[key] = classify(r, good, j, job_alive(j))
    return states

"""Job records: the JSON the executor keeps per step about its job, ``workdir/jobs/<stage>/<name>-<key8>.json``
(docs/design.md §1, §9): their path and their in-place update. Read by the executors, the step
jobs (``jobs.mark_job_record``) and the status views."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdhpc.base.paths import inside

if TYPE_CHECKING:
    from cdhpc.sweep.plan import StepSpec


def job_record_path(workdir: Path, spec: StepSpec) -> Path:
    return inside(workdir, "jobs", spec.stage, f"{spec.name}-{spec.key[:8]}.json")


def update_job_record(path: Path, **changes: Any) -> None:
    """Rewrite one job record with `changes` (e.g. a state sacct reported), by rename so a reader
    sees the old record or the new one. No fsync: a record is a cache of what the executor
    knows, and an update lost to a crash is made again on the next poll; a mass cancel or poll
    of 46k records would otherwise spend a minute in fsync."""
    rec = json.loads(path.read_text())
    rec.update(changes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")  # open() gives the umask's mode
    os.replace(tmp, path)

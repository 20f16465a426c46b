"""Job records: the JSON the executor keeps per step about its job,
``workdir/jobs/<stage>/<name>-<key8>.json`` (docs/design.md §1, §9). One type, `JobRecord`, with
its path, read, write and in-place update; written by the executors (local and SLURM) and by a
local step's job (``jobs.mark_job_record``), indexed by the manifest (`FIELDS`), read by the status views."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdhpc.base.atomicio import atomic_write_json
from cdhpc.sweep.workdir import Workdir

if TYPE_CHECKING:
    from cdhpc.sweep.plan import StepSpec


@dataclass
class JobRecord:
    """What the executor knows of the job that runs (or ran) one step."""

    key: str  # the step's key
    executor: str  # "local" | "slurm"
    job_id: str  # a local job's controller pid, or the SLURM job (array) id
    state: str  # submitit's / SLURM's: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    attempt: int  # 1 for the first submission of this step
    submitted: float  # epoch seconds
    updated: float
    array_index: int | None = None  # the element of a SLURM array
    stdout: str | None = None  # the job's log files
    stderr: str | None = None
    job_name: str | None = None  # SLURM: cdhpc.<sweep>.<stage>.<hash>, how a lost submission is found again
    mem_gb: float | None = None  # SLURM: the memory asked (an OUT_OF_MEMORY retry asks more)

    @classmethod
    def read(cls, path: Path) -> JobRecord:
        """Raises OSError or ValueError (also for a record that lacks a field)."""
        data = json.loads(Path(path).read_text())
        try:
            return cls(**{k: data[k] for k in FIELD_NAMES if k in data})
        except TypeError as e:
            raise ValueError(f"{path}: not a job record ({e})") from None

    def write(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


FIELD_NAMES = tuple(f.name for f in fields(JobRecord))
FIELDS = FIELD_NAMES[1:]  # besides the key: the manifest's columns of the jobs table


def job_record_path(workdir: Path, spec: StepSpec) -> Path:
    return Workdir(workdir).job_record(spec.stage, spec.name, spec.key)


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

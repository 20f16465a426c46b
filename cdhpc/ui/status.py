"""The data behind ``cdhpc status``: one shell that reads a workdir into a ``Snapshot`` (ingest
only what changed, then one query per table: `cdhpc.sweep.manifest_reads`), and the pure views of
a snapshot that the plain table (``--once``, `cdhpc.ui.plain`) and the terminal UI (``cdhpc.ui.tui``)
show.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.sweep.manifest_reads import (
    BULK_KEYS,
    data_version,
    file_stamps,
    moved_output_rows,
    receipt_rows,
    status_rows,
)
from cdhpc.sweep.workdir import Workdir

# the pure views of a snapshot, re-exported: cdhpc.ui.status is where the CLI, TUI and tests find them
from cdhpc.ui.overview import StageRow, format_duration, remaining_estimate_s, stage_counts, stage_overview  # noqa: F401
from cdhpc.ui.partial import LOWER_IS_BETTER, PartialTable, partial_table  # noqa: F401
from cdhpc.ui.steptable import SORT_COLUMNS, STATES, StepRow, filter_rows, sort_rows, step_rows  # noqa: F401


@dataclass
class Snapshot:
    """One consistent view of a sweep: its plan, each step's state, and the manifest rows."""

    workdir: Path
    steps: list[
        Any
    ]  # plan.json's step dicts in dependency order (heads: key, stage, name, gpus; SnapshotReader.specs)
    states: dict[str, str]  # key -> one of STATES
    receipts: dict[str, Any] = field(default_factory=dict)  # key -> receipts row (a mapping)
    jobs: dict[str, Any] = field(default_factory=dict)  # key -> jobs row (a mapping)
    val_ppl: dict[str, float] = field(default_factory=dict)  # pretrain key -> last checkpoint's val PPL
    tokens: dict[str, int] = field(default_factory=dict)  # generate key -> tokens in its shard
    scores: dict[str, float] = field(default_factory=dict)  # evaluate key -> score (task units)
    now: float = 0.0  # unix time of the read (s)


class SnapshotReader:
    """Reads a workdir again and again, cheaply. Each read ingests what changed into the manifest
    (which lists only the directories whose mtime changed: receipts and job records are written
    by rename) and queries again only the rows of steps whose files changed, here or in another
    process's ingest (PRAGMA data_version tells). `specs=False` (``cdhpc status --once``): the
    steps are the manifest's heads (key, stage, name, gpus) while plan.json is what it registered,
    so plan.json is not parsed, and the snapshot holds only what the plain table needs (receipt
    times, job records, tokens; `receipts_of` reads the errors of the failed steps shown);
    `specs=True` (the terminal UI, ``cdhpc cancel``): plan.json's spec dicts, parsed once per
    change of the file, and every row. Outputs of done steps are re-checked (size + mtime) on
    `read(verify=True)` and for receipts that changed; live jobs' pids are probed on every read."""

    def __init__(self, workdir: Path, specs: bool = True):
        self.workdir = Path(workdir)
        self.specs = specs
        self._plan_sig: tuple | None = None  # (mtime_ns, size) of plan.json as self._steps holds it
        self._steps: list[dict[str, Any]] = []
        self._rows: dict[str, dict] = {}
        self._version: int | None = None  # the manifest's data_version when self._rows were read
        self._intact: dict[str, bool] = {}  # key -> outputs intact at the last check
        self._last_poll = 0.0  # time.monotonic() of the last SLURM poll
        self.slurm_poll_s = 2.0  # at most one sacct call per this many seconds
        self.slurm_error: str | None = None  # why the last SLURM poll failed
        self._manifest: Any = None  # the open Manifest (fallback mode: in memory where it cannot be written)
        self._manifest_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file it opened

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None

    @property
    def in_memory(self) -> bool:
        """The manifest could not be written: this reader indexes the workdir in memory."""
        return self._manifest is not None and self._manifest.in_memory

    def manifest(self) -> Any:
        """The reader's Manifest, kept open between reads (no reconnect and quick_check per
        refresh) and reopened, with every row read again, when the file was replaced (healed or
        removed by another process). Read-only: it writes nothing where the file cannot be written."""
        from cdhpc.sweep.manifest import Manifest

        ident = _file_id(Workdir(self.workdir).manifest)
        m = self._manifest
        if m is not None and (m.in_memory or ident == self._manifest_id):
            return m
        if m is not None:
            m.close()
            self._rows, self._plan_sig = {}, None
        self._manifest = Manifest(self.workdir, fallback=True)
        self._manifest_id = _file_id(self._manifest.path)
        return self._manifest

    def outputs_of(self, key: str) -> list[Any]:
        """A step's indexed outputs (for the TUI's detail screen)."""
        return self.manifest().outputs_of(key)

    def receipts_of(self, keys: list[str]) -> dict[str, Any]:
        """Every column of the given steps' receipt rows (a light snapshot's lack errors and logs)."""
        return receipt_rows(self.manifest().db, keys)

    def specs_of(self, keys: list[str]) -> list[dict[str, Any]]:
        """The full spec dicts of the given steps (from the manifest when `specs=False`)."""
        if self.specs:
            wanted = set(keys)
            return [s for s in self._steps if s["key"] in wanted]
        return self.manifest().specs_of(keys)

    def read(self, verify: bool = False, ingest: bool = True) -> Snapshot:
        """The current snapshot; `verify` re-checks every done step's outputs and lists every
        directory. `ingest=False` (for a first render within a second) shows the manifest as last
        ingested. Live SLURM jobs are polled first (one sacct call, at most every `slurm_poll_s`);
        the job records whose state changed are rewritten and ingested like any other file."""
        first = not self._rows
        if ingest and not first:
            self._poll_slurm()
        snap = self._read(verify, ingest)
        if ingest and first and self._poll_slurm():
            snap = self._read(verify, ingest)
        return snap

    def _poll_slurm(self) -> int:
        """Refresh the records of live SLURM jobs; how many changed (0 when polled recently)."""
        from cdhpc.sweep.stepstate import LIVE_JOB_STATES

        now = time.monotonic()
        if now - self._last_poll < self.slurm_poll_s:
            return 0
        self._last_poll = now
        live = [
            j
            for j in self._rows.get("jobs", {}).values()
            if j["executor"] == "slurm" and j["state"] in LIVE_JOB_STATES
        ]
        if not live:
            return 0
        from cdhpc.executors.slurm_queue import (
            refresh_job_records,  # only now: it imports the SLURM profile models
        )

        try:
            return refresh_job_records(self.workdir, live)
        except (
            RuntimeError,
            OSError,
        ) as e:  # SLURM unreachable, or a read-only workdir: the last known states
            self.slurm_error = str(e)
            return 0

    def _read(self, verify: bool, ingest: bool) -> Snapshot:
        from cdhpc.sweep.stepstate import step_states

        m = self.manifest()  # first: it may reset the caches below
        self._load_steps(m, ingest)
        version = data_version(m.db)  # before the rows are compared: a later commit is seen next time
        changed = set()
        if self._rows and version != self._version:  # another process ingested since the last read
            if self.specs:
                changed = self._changed_elsewhere(m)
            else:  # light rows hold no file stamps to compare: read them all again
                self._rows = {}
        if ingest:
            changed |= m.ingest(full=verify).keys
        self._version = version
        if not self._rows:
            self._rows, self._intact = status_rows(m.db, light=not self.specs), {}
        elif changed:
            self._requery(m, changed)
        if verify:
            self._intact = {}
        rows = self._rows
        self._check_outputs(m)
        states = step_states(
            self.workdir,
            [s["key"] for s in self._steps],
            rows["receipts"],
            rows["jobs"],
            m.outputs_of,
            intact=self._intact,
        )
        return Snapshot(
            self.workdir,
            self._steps,
            states,
            rows["receipts"],
            rows["jobs"],
            rows["val_ppl"],
            rows["tokens"],
            rows["scores"],
            time.time(),
        )

    def _load_steps(self, m: Any, ingest: bool) -> None:
        """The plan's steps, again only when plan.json changed: the manifest's heads while it
        holds plan.json (no parse), else plan.json parsed (and registered, when ingesting)."""
        try:
            st = Workdir(self.workdir).plan.stat()
        except FileNotFoundError:
            read_plan_steps(self.workdir)  # raises its one-line WorkdirError
            raise
        if (st.st_mtime_ns, st.st_size) == self._plan_sig:
            return
        if ingest and not self.specs and m.plan_current():
            self._steps, self._plan_sig = m.step_heads(), (st.st_mtime_ns, st.st_size)
            return
        steps, stamp = read_plan_steps(self.workdir, stamped=True)
        if ingest:
            m.register_plan(steps, stamp)  # nothing to do where the manifest holds this plan already
        from cdhpc.sweep.manifest_db import step_gpus

        self._steps = (
            steps
            if self.specs
            else [
                {"key": s["key"], "stage": s["stage"], "name": s["name"], "gpus": step_gpus(s)} for s in steps
            ]
        )
        self._plan_sig = stamp[:2]

    def _changed_elsewhere(self, m: Any) -> set[str]:
        """Keys whose receipt or job rows another process (a launcher) ingested since the last read."""
        keys = set()
        for table in ("receipts", "jobs"):
            cached = {k: (r["mtime_ns"], r["size"]) for k, r in self._rows[table].items()}
            now = file_stamps(m.db, table)
            keys |= {k for k in cached.keys() | now.keys() if cached.get(k) != now.get(k)}
        return keys

    def _check_outputs(self, m: Any) -> None:
        """Check the outputs of done steps not checked yet: each stat-ed against its recorded size
        and mtime in one pass (no key or hash read), then the rule on those that moved."""
        from cdhpc.sweep.stepstate import outputs_intact_by_key

        todo = [k for k, r in self._rows["receipts"].items() if r["status"] == "ok" and k not in self._intact]
        if not todo:
            return
        moved = moved_output_rows(m.db, str(self.workdir), todo)
        self._intact.update(dict.fromkeys(todo, True))  # a step without moved outputs is intact
        if moved:
            wanted, checked = set(todo), outputs_intact_by_key(str(self.workdir), moved)
            self._intact.update((k, ok) for k, ok in checked.items() if k in wanted)

    def _requery(self, m: Any, keys: set[str]) -> None:
        """Replace the cached rows of the given steps with the manifest's."""
        if len(keys) > BULK_KEYS:  # one query of every row is faster (and within SQLite's variable limit)
            self._rows, self._intact = status_rows(m.db, light=not self.specs), {}
            return
        fresh = status_rows(m.db, sorted(keys), light=not self.specs)
        for table, rows in self._rows.items():
            for key in keys:
                rows.pop(key, None)
            rows.update(fresh[table])
        for key in keys:
            self._intact.pop(key, None)


def read_plan_steps(workdir: Path, stamped: bool = False) -> Any:
    """plan.json's step dicts (with the file's stamp, (mtime_ns, size, sha256), if `stamped`).
    Raises WorkdirError (one line) when it is not what a launcher writes."""
    from cdhpc.sweep.lock import WorkdirError
    from cdhpc.sweep.manifest_db import read_stamped

    path = Workdir(workdir).plan
    try:
        data, stamp = read_stamped(path)
        steps = json.loads(data)["steps"]
    except FileNotFoundError:
        raise WorkdirError(f"cdhpc: {path} does not exist; launch the sweep once to write it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise WorkdirError(
            f"cdhpc: {path} is not the plan a launcher writes ({e}); "
            "run the sweep's launch command again to rewrite it (its steps are kept)"
        ) from None
    return (steps, stamp) if stamped else steps


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino

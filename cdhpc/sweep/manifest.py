"""The manifest: ``workdir/manifest.sqlite``, the only SQL in cdhpc.

Every row is derived from files the steps and the scheduler write (``plan.json``, receipts, job
records), so the database can be deleted and rebuilt without losing anything. Only the launcher,
``cdhpc status`` and ``cdhpc export`` open it; steps never do (SQLite locking is unsafe on the
network filesystems compute nodes share).

Opening it heals it: a file that is not a database or fails ``PRAGMA quick_check`` is moved aside
to ``manifest.sqlite.corrupt-<UTC time>`` and rebuilt from the files, under the workdir's lock.
Read-only commands open it with ``fallback=True``: where it cannot be written (read-only
filesystem, no permission, another process's write lock) or healed (another process holds the
workdir), they index into an in-memory copy and write nothing. An ingest lists only the
receipts/ and jobs/ directories whose mtime changed, and ``cdhpc status`` reads the steps from here
while plan.json is what was registered: the ``stamps`` table tells both (``cdhpc.sweep.manifest_db``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cdhpc.sweep.manifest_db import (
    SCHEMA,
    UNWRITABLE_CODES,
    Corrupt,
    ManifestError,
    Stamp,
    Transaction,
    check,
    connect,
    move_aside,
    prepare,
    read_stamped,
    sqlite_code,
    stamp_if_same,
    step_gpus,
    unusable,
    writable,
    writes,
)
from cdhpc.sweep.manifest_ingest import Indexer, IngestResult
from cdhpc.sweep.workdir import PLAN, Workdir

log = logging.getLogger("cdhpc")

READER_TIMEOUT_S = 5.0  # how long a read-only command waits for another writer before using a copy


class Manifest:
    """A connection to one sweep's manifest. Use as a context manager.

    `fallback` (read-only commands: status, report, export): never fail because the file cannot be
    written or healed; use an in-memory copy instead (`in_memory` tells). `memory` (--dry-run):
    always the in-memory copy. `healed` is the rebuild's result when the file was healed."""

    def __init__(self, workdir: str | Path, *, fallback: bool = False, memory: bool = False):
        self.workdir = Path(workdir)
        self.path = Workdir(self.workdir).manifest
        self.fallback = fallback or memory
        self.in_memory = False
        self.healed: IngestResult | None = None
        if memory or (fallback and not writable(self.path)):
            self._open_memory()
        else:
            self._open_disk()

    def _open_disk(self) -> None:
        try:
            self.db = connect(self.path, READER_TIMEOUT_S if self.fallback else 60)
            try:
                check(self.db)
                prepare(self.db)
            except BaseException:
                self.db.close()
                raise
        except Corrupt as e:
            self._heal(str(e))
        except sqlite3.OperationalError as e:
            if sqlite_code(e) not in UNWRITABLE_CODES:
                raise
            if not self.fallback:
                raise unusable(self.path, e) from e
            self._open_memory()

    def _open_memory(self) -> None:
        """An in-memory copy of the file (when it is intact and readable), else an empty index."""
        self.in_memory = True
        self.db = connect(":memory:", 0)
        if self.path.is_file():
            try:
                self._copy_into(self.db)
            except (Corrupt, sqlite3.OperationalError) as e:  # then every file is indexed from scratch
                if isinstance(e, Corrupt):
                    self._warn_in_memory(str(e))
                self.db.close()
                self.db = connect(":memory:", 0)
        prepare(self.db)

    def _warn_in_memory(self, why: str) -> None:
        log.warning(
            "cdhpc: %s is corrupt (%s); indexing the receipts and job records in memory this time "
            "(cdhpc manifest rebuild repairs the file)",
            self.path,
            why,
        )

    def _copy_into(self, dest: sqlite3.Connection) -> None:
        """Copy the file, opened read-only, into `dest` (a hot journal on a read-only disk makes
        this fail: then every file is ingested instead)."""
        src = connect(f"{self.path.resolve().as_uri()}?mode=ro", READER_TIMEOUT_S, uri=True)
        try:
            check(src)
            src.backup(dest)
        finally:
            src.close()

    def _heal(self, why: str) -> None:
        """Move the corrupt file aside and rebuild it from the files, holding the workdir's lock
        (taken here unless this process holds it); without the lock, fallback readers index in
        memory and writers stop with one line."""
        from cdhpc.sweep.lock import WorkdirBusy, WorkdirLock, error_line

        lock = WorkdirLock(self.workdir, command="cdhpc, rebuilding manifest.sqlite")
        try:
            lock.acquire()
        except (WorkdirBusy, OSError) as e:
            if not self.fallback:
                reason = error_line(e) or str(e)
                raise ManifestError(
                    f"cdhpc: {self.path} is corrupt ({why}) and cannot be rebuilt now: "
                    f"{reason.removeprefix('cdhpc: ')}"
                ) from e
            self._warn_in_memory(why)
            self.in_memory = True
            self.db = connect(":memory:", 0)
            prepare(self.db)
            return
        try:
            aside = move_aside(self.path)
            self.db = connect(self.path, READER_TIMEOUT_S if self.fallback else 60)
            prepare(self.db)
            self.healed = self._rebuild()
        finally:
            lock.release()
        log.warning(
            "cdhpc: %s was corrupt (%s); moved it to %s and rebuilt it from the receipts and job records",
            self.path,
            why,
            aside,
        )

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------------------
    @writes
    def register_plan(self, specs: Iterable[dict[str, Any]], stamp: Stamp | None = None) -> None:
        """Replace the steps table with the sweep's plan (dicts of StepSpec.to_dict()). `stamp` is
        plan.json's (mtime_ns, size, sha256) when `specs` were read from it; without it plan.json is
        read and compared. A plan equal to plan.json is stamped, so a fresh `cdhpc status` reads the
        steps from here instead of parsing plan.json; the table is left as it is when it already
        holds that plan (a relaunch)."""
        specs = list(specs)
        if stamp is None:
            stamp = stamp_if_same(self.workdir / PLAN, specs)
        old = self._stamp(PLAN)
        if stamp is not None and old is not None and old[1:] == stamp[1:]:  # the same size and sha256
            if old[0] != stamp[0]:
                self._restamp(stamp[0])
            return
        self._register_plan(specs, stamp)

    def _register_plan(self, specs: list[dict[str, Any]], stamp: Stamp | None) -> None:
        rows = [
            (
                s["key"],
                s["stage"],
                s["name"],
                f"{s['stage']}/{s['name']}-{s['key'][:8]}",
                i,
                step_gpus(s),
                json.dumps(s, sort_keys=True),
            )
            for i, s in enumerate(specs)
        ]
        with self._tx():
            self.db.execute("DELETE FROM steps")
            self.db.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?,?)", rows)
            self.db.execute("DELETE FROM stamps WHERE path = ?", (PLAN,))
            if stamp is not None:  # written with the steps: a stamp always describes the table's plan
                self.db.execute("INSERT INTO stamps VALUES (?,?,?,?)", (PLAN, *stamp))

    @writes
    def plan_current(self) -> bool:
        """The steps table holds plan.json as it is now: the same size and mtime as when it was
        registered, or the same content (a relaunch rewrites an unchanged plan; its new mtime is
        recorded then)."""
        old = self._stamp(PLAN)
        try:
            st = os.stat(self.workdir / PLAN)
        except FileNotFoundError:
            return False
        if old is None or old[1] != st.st_size:
            return False
        if old[0] == st.st_mtime_ns:
            return True
        _, new = read_stamped(self.workdir / PLAN)
        if new[1:] != old[1:]:
            return False
        self._restamp(new[0])
        return True

    def _restamp(self, mtime_ns: int) -> None:
        with self._tx():  # plan.json rewritten with the same content: only its mtime is new
            self.db.execute("UPDATE stamps SET mtime_ns = ? WHERE path = ?", (mtime_ns, PLAN))

    def step_heads(self) -> list[sqlite3.Row]:
        """Each planned step's key, stage, name and GPUs, in plan order (what `cdhpc status
        --once` needs, without parsing 46k specs; rows read from an index that holds them)."""
        return self.db.execute("SELECT key, stage, name, gpus FROM steps ORDER BY ord").fetchall()

    def specs_of(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The registered spec dicts of the given steps, in plan order."""
        keys = list(keys)
        sql = f"SELECT spec FROM steps WHERE key IN ({','.join('?' * len(keys))}) ORDER BY ord"
        return [json.loads(spec) for (spec,) in self.db.execute(sql, keys)] if keys else []

    def _stamp(self, path: str) -> Stamp | None:
        row = self.db.execute("SELECT mtime_ns, size, sha256 FROM stamps WHERE path = ?", (path,)).fetchone()
        return None if row is None else tuple(row)

    @writes
    def ingest(self, full: bool = False) -> IngestResult:
        """Index receipts and job records that are new or changed since the last ingest; `full`
        lists every directory, not only those whose mtime changed."""
        return self._ingest(full)

    def _ingest(self, full: bool = False) -> IngestResult:
        with self._tx():
            return Indexer(self.db, self.workdir).ingest(full)

    @writes
    def rebuild(self) -> IngestResult:
        """Drop every table and index all files again (the tables of any older cdhpc too)."""
        return self._rebuild()

    def _rebuild(self) -> IngestResult:
        with self._tx():
            tables = self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
            for (table,) in tables.fetchall():
                self.db.execute(f'DROP TABLE "{table}"')
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(statement)
        plan = self.workdir / PLAN
        if plan.is_file():
            data, stamp = read_stamped(plan)
            self._register_plan(json.loads(data)["steps"], stamp)
        return self._ingest()

    def _tx(self) -> sqlite3.Connection:
        return Transaction(self.db)

    # -- reads -------------------------------------------------------------------------------
    def rows(self, table: str, order: str = "rowid") -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(f"SELECT * FROM {table} ORDER BY {order}")]

    def receipts_by_key(self) -> dict[str, sqlite3.Row]:
        return {r["key"]: r for r in self.db.execute("SELECT * FROM receipts")}

    def jobs_by_key(self) -> dict[str, sqlite3.Row]:
        return {r["key"]: r for r in self.db.execute("SELECT * FROM jobs")}

    def outputs_of(self, key: str) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM outputs WHERE key = ? ORDER BY path", (key,)))

    def outputs_by_key(self) -> dict[str, list[sqlite3.Row]]:
        """Every indexed output, grouped by step key (one query instead of one per step)."""
        out: dict[str, list[sqlite3.Row]] = {}
        for r in self.db.execute("SELECT * FROM outputs ORDER BY key, path"):
            out.setdefault(r["key"], []).append(r)
        return out

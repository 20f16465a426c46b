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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.sweep.jobrecords import FIELDS as JOB_FIELDS  # the jobs table's columns besides key, path, stamp
from cdhpc.sweep.manifest_db import (
    RACY_NS, SCHEMA, UNWRITABLE_CODES, Corrupt, ManifestError, Stamp, Transaction, check, connect,
    move_aside, mtime_ns, prepare, read_stamped, sqlite_code, stamp_if_same, step_gpus, unusable, writable, writes)
from cdhpc.sweep.workdir import PLAN, Workdir

log = logging.getLogger("cdhpc")

# Receipt `rows` may fill these tables; their columns (besides `key`) are the allowed fields.
ROW_TABLES = {
    "checkpoints": ("run", "step", "path", "val_loss", "val_ppl"),
    "shards": ("method", "shard", "path", "samples", "tokens", "sha256"),
    "scores": ("run", "method", "seed", "step", "task", "score", "task_version", "data_sha256", "n_items", "path"),
}


@dataclass
class IngestResult:
    receipts: int = 0
    jobs: int = 0
    bad: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)  # steps whose receipt or job rows were added, changed or dropped


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
        log.warning("cdhpc: %s is corrupt (%s); indexing the receipts and job records in memory this time "
                    "(cdhpc manifest rebuild repairs the file)", self.path, why)

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
                raise ManifestError(f"cdhpc: {self.path} is corrupt ({why}) and cannot be rebuilt now: "
                                    f"{reason.removeprefix('cdhpc: ')}") from e
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
        log.warning("cdhpc: %s was corrupt (%s); moved it to %s and rebuilt it from the receipts and job records",
                    self.path, why, aside)

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
        rows = [(s["key"], s["stage"], s["name"], f"{s['stage']}/{s['name']}-{s['key'][:8]}", i, step_gpus(s),
                 json.dumps(s, sort_keys=True)) for i, s in enumerate(specs)]
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
        result = IngestResult()
        with self._tx():
            if full:
                self.db.execute("DELETE FROM stamps WHERE path != ?", (PLAN,))
            settled = time.time_ns() - RACY_NS
            result.receipts = self._ingest_dir("receipts", self._put_receipt, result, settled)
            result.jobs = self._ingest_dir("jobs", self._put_job, result, settled)
        return result

    @writes
    def rebuild(self) -> IngestResult:
        """Drop every table and index all files again (the tables of any older cdhpc too)."""
        return self._rebuild()

    def _rebuild(self) -> IngestResult:
        with self._tx():
            tables = self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
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

    def _ingest_dir(self, sub: str, put: Any, result: IngestResult, settled: int) -> int:
        """Index receipts/ or jobs/: only stage directories whose mtime changed since they were
        last listed (a receipt or job record is written by rename, which changes it), and in them
        only files whose (mtime, size) changed; rows of removed files are dropped. A directory
        changed after `settled` (ns), or holding a file that could not be read, is listed again
        next time: two renames within one timestamp tick leave its mtime unchanged."""
        root = self.workdir / sub
        stamps = dict(self.db.execute("SELECT path, mtime_ns FROM stamps WHERE path = ? OR path GLOB ?", (sub, f"{sub}/*")))
        top = mtime_ns(root)
        if top is not None and top == stamps.get(sub):  # no stage directory added or removed
            stages = [p.split("/", 1)[1] for p in stamps if p != sub]
            n = 0
        else:
            stages = [e.name for e in os.scandir(root) if e.is_dir()] if top is not None else []
            n = self._forget_dirs(sub, set(stages), stamps, result)
        for name in stages:
            rel, mtime = f"{sub}/{name}", mtime_ns(root / name)
            if mtime is not None and mtime == stamps.get(rel):
                continue
            bad = len(result.bad)
            n += self._ingest_stage(sub, rel, put, result)
            ok = mtime is not None and mtime < settled and len(result.bad) == bad
            self._set_stamp(rel, mtime if ok else None, stamps)
        self._set_stamp(sub, top if top is not None and top < settled else None, stamps)
        return n

    def _set_stamp(self, rel: str, mtime: int | None, stamps: dict[str, Any]) -> None:
        if rel not in stamps or stamps[rel] != mtime:  # no write (and no new data_version) when unchanged
            self.db.execute("INSERT OR REPLACE INTO stamps (path, mtime_ns) VALUES (?, ?)", (rel, mtime))

    def _forget_dirs(self, sub: str, present: set[str], stamps: dict[str, Any], result: IngestResult) -> int:
        """Drop the rows and stamps of stage directories that are gone."""
        gone = [rel for (rel,) in self.db.execute(f"SELECT path FROM {sub}").fetchall() if rel.split("/")[1] not in present]
        for rel in gone:
            result.keys.update(self._forget(sub, rel))
        self.db.executemany("DELETE FROM stamps WHERE path = ?",
                            [(rel,) for rel in stamps if rel != sub and rel.split("/", 1)[1] not in present])
        return len(gone)

    def _ingest_stage(self, sub: str, rel_dir: str, put: Any, result: IngestResult) -> int:
        """Index one stage directory's new or changed files (os.scandir, one stat per entry)."""
        bad = len(result.bad)
        seen = {r[0]: (r[1], r[2]) for r in self.db.execute(
            f"SELECT path, mtime_ns, size FROM {sub} WHERE path > ? AND path < ?", (rel_dir + "/", rel_dir + "0"))}
        files = {}
        try:
            for e in os.scandir(self.workdir / rel_dir):
                if e.name.endswith(".json"):
                    try:
                        files[f"{rel_dir}/{e.name}"] = e.stat()
                    except FileNotFoundError:  # removed while listed
                        pass
        except FileNotFoundError:
            pass
        for gone in seen.keys() - files.keys():
            result.keys.update(self._forget(sub, gone))
        todo = [rel for rel in sorted(files) if seen.get(rel) != (files[rel].st_mtime_ns, files[rel].st_size)]
        if todo:
            from cdhpc.sweep.receipts import ReceiptError  # here: it imports pydantic, which `cdhpc status` may not need
        for rel in todo:
            st = files[rel]
            old = self.db.execute(f"SELECT key FROM {sub} WHERE path = ?", (rel,)).fetchall() if rel in seen else []
            try:
                result.keys.add(put(self.workdir / rel, rel, st))
                result.keys.update(k for (k,) in old)
            except (ReceiptError, ValueError, KeyError) as e:
                result.bad.append(str(e))
        return len(seen.keys() - files.keys()) + len(todo) - (len(result.bad) - bad)

    def _put_receipt(self, f: Path, rel: str, st: Any) -> str:
        from cdhpc.sweep.receipts import ReceiptError, read_receipt

        r = read_receipt(f)
        for table, rows in r.rows.items():
            if table not in ROW_TABLES:
                raise ReceiptError(f"{f}: rows for unknown table {table!r} (known: {', '.join(ROW_TABLES)})")
            for row in rows:
                extra = set(row) - set(ROW_TABLES[table])
                if extra:
                    raise ReceiptError(f"{f}: rows.{table} has unknown fields {sorted(extra)}")
        for (key,) in self.db.execute("SELECT key FROM receipts WHERE path = ?", (rel,)).fetchall():
            self._delete_key(key)  # the file held another step's receipt before
        self._delete_key(r.key)
        self.db.execute("INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            r.key, r.stage, r.name, r.status, rel, st.st_mtime_ns, st.st_size, r.started, r.finished,
            r.finished - r.started, r.host, r.attempt, r.error, r.logs.get("stdout"), r.logs.get("stderr"),
            json.dumps(r.slurm, sort_keys=True), json.dumps(r.metrics, sort_keys=True)))
        self.db.executemany("INSERT INTO outputs VALUES (?,?,?,?,?)",
                            [(r.key, o.path, o.sha256, o.bytes, o.mtime_ns) for o in r.outputs])
        for table, rows in r.rows.items():
            cols = ("key",) + ROW_TABLES[table]
            self.db.executemany(f"INSERT OR REPLACE INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                                [(r.key, *(row.get(c) for c in ROW_TABLES[table])) for row in rows])
        return r.key

    def _forget(self, table: str, rel: str) -> list[str]:
        """A receipt or job record file was removed: drop what was derived from it; its keys."""
        keys = [key for (key,) in self.db.execute(f"SELECT key FROM {table} WHERE path = ?", (rel,)).fetchall()]
        for key in keys:
            if table == "receipts":
                self._delete_key(key)
            else:
                self.db.execute("DELETE FROM jobs WHERE key = ?", (key,))
        return keys

    def _delete_key(self, key: str) -> None:
        for table in ("receipts", "outputs", *ROW_TABLES):
            self.db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))

    def _put_job(self, f: Path, rel: str, st: Any) -> str:
        try:
            rec = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not a valid job record ({e.msg} at line {e.lineno})") from None
        self.db.execute(f"INSERT OR REPLACE INTO jobs (key, {', '.join(JOB_FIELDS)}, path, mtime_ns, size) VALUES "
                        f"({','.join('?' * (len(JOB_FIELDS) + 4))})",  # lenient: a field an older record lacks is NULL
                        (rec["key"], *(rec.get(k) for k in JOB_FIELDS), rel, st.st_mtime_ns, st.st_size))
        return rec["key"]

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

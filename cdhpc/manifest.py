"""The manifest: ``workdir/manifest.sqlite``, the only SQL in cdhpc.

Every row is derived from files the steps and the scheduler write (``plan.json``, receipts, job
records), so the database can be deleted and rebuilt without losing anything. Only the launcher,
``cdhpc status`` and ``cdhpc export`` open it; steps never do (SQLite locking is unsafe on the
network filesystems compute nodes share).

Opening it heals it: a file that is not a database or fails ``PRAGMA quick_check`` is moved aside
to ``manifest.sqlite.corrupt-<UTC time>`` and rebuilt from the files, under the workdir's lock.
Read-only commands open it with ``fallback=True``: where it cannot be written (read-only
filesystem, no permission, another process's write lock) or healed (another process holds the
workdir), they index into an in-memory copy and write nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cdhpc.receipts import Receipt, ReceiptError, read_receipt

log = logging.getLogger("cdhpc")

SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (key TEXT PRIMARY KEY, stage TEXT NOT NULL, name TEXT NOT NULL,
    dir TEXT NOT NULL, ord INTEGER NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (key TEXT PRIMARY KEY, stage TEXT, name TEXT, status TEXT,
    path TEXT UNIQUE, mtime_ns INTEGER, size INTEGER, started REAL, finished REAL, runtime_s REAL,
    host TEXT, attempt INTEGER, error TEXT, stdout TEXT, stderr TEXT, slurm TEXT, metrics TEXT);
CREATE TABLE IF NOT EXISTS outputs (key TEXT, path TEXT, sha256 TEXT, bytes INTEGER,
    mtime_ns INTEGER, PRIMARY KEY (key, path));
CREATE TABLE IF NOT EXISTS checkpoints (key TEXT, run TEXT, step INTEGER, path TEXT,
    val_loss REAL, val_ppl REAL, PRIMARY KEY (key, step));
CREATE TABLE IF NOT EXISTS shards (key TEXT PRIMARY KEY, method TEXT, shard INTEGER, path TEXT,
    samples INTEGER, tokens INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, run TEXT, method TEXT, seed INTEGER,
    step INTEGER, task TEXT, score REAL, task_version TEXT, data_sha256 TEXT, n_items INTEGER,
    path TEXT);
CREATE TABLE IF NOT EXISTS jobs (key TEXT PRIMARY KEY, executor TEXT, job_id TEXT,
    array_index INTEGER, state TEXT, attempt INTEGER, submitted REAL, updated REAL, stdout TEXT,
    stderr TEXT, job_name TEXT, mem_gb REAL, path TEXT UNIQUE, mtime_ns INTEGER, size INTEGER);
CREATE INDEX IF NOT EXISTS steps_stage ON steps (stage);
"""
SCHEMA_NAMES = {"steps", "receipts", "outputs", "checkpoints", "shards", "scores", "jobs", "steps_stage"}

# Receipt `rows` may fill these tables; their columns (besides `key`) are the allowed fields.
ROW_TABLES = {
    "checkpoints": ("run", "step", "path", "val_loss", "val_ppl"),
    "shards": ("method", "shard", "path", "samples", "tokens", "sha256"),
    "scores": ("run", "method", "seed", "step", "task", "score", "task_version", "data_sha256", "n_items", "path"),
}
JOB_FIELDS = ("executor", "job_id", "array_index", "state", "attempt", "submitted", "updated", "stdout", "stderr",
              "job_name", "mem_gb")


@dataclass
class IngestResult:
    receipts: int = 0
    jobs: int = 0
    bad: list[str] = field(default_factory=list)


CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
UNWRITABLE_CODES = {5: "another process is writing it: wait for it, then run the same command again",  # BUSY
                    6: "another process is writing it: wait for it, then run the same command again",  # LOCKED
                    8: "it cannot be written: check the permissions and the filesystem of the workdir",  # READONLY
                    10: "disk I/O error: check the filesystem of the workdir",  # IOERR
                    13: "the disk is full: free space, then run the same command again (re-running is safe)",  # FULL
                    14: "it cannot be opened for writing: check the permissions of the workdir"}  # CANTOPEN
READER_TIMEOUT_S = 5.0  # how long a read-only command waits for another writer before using a copy


class ManifestError(Exception):
    """The manifest cannot be used; the message is one line naming the file and what to do."""


class _Corrupt(Exception):
    """The file is not an intact SQLite database (the message says why)."""


def _code(e: sqlite3.Error) -> int:
    return (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF


def _connect(target: str | Path, timeout: float, uri: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(target, timeout=timeout, isolation_level=None, uri=uri)
    db.row_factory = sqlite3.Row
    return db


def _check(db: sqlite3.Connection) -> None:
    """Raise _Corrupt unless the database passes PRAGMA quick_check (~20 ms at 10,000 steps)."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and _code(e) not in CORRUPT_CODES:
            raise
        raise _Corrupt(str(e)) from e
    if [tuple(r) for r in rows] != [("ok",)]:
        raise _Corrupt(str(rows[0][0]) if rows else "quick_check returned nothing")


def _prepare(db: sqlite3.Connection) -> None:
    """Create missing tables; a current manifest is not written (so it opens on a read-only disk)."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
    if cols and "mem_gb" not in cols:  # a manifest of an older cdhpc: job rows are re-derived
        db.execute("DROP TABLE jobs")
    have = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    if not have >= SCHEMA_NAMES:
        db.executescript(SCHEMA)


def _writable(path: Path) -> bool:
    """The manifest (or, while it does not exist, its directory) can be written by this process."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _unusable(path: Path, e: sqlite3.Error) -> ManifestError:
    advice = UNWRITABLE_CODES.get(_code(e), "it is corrupt: run cdhpc manifest rebuild (it is rebuilt from the receipts)")
    return ManifestError(f"cdhpc: {path}: {e}; {advice}")


def move_aside(path: Path) -> Path:
    """Rename a corrupt manifest (and any journal of it) to `<name>.corrupt-<UTC time>`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):  # a journal left beside it must not meet the new file
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


def _writes(method: Any) -> Any:
    """A write: in fallback mode, a database that turns out unwritable (or locked by another
    writer) is replaced by an in-memory copy and the write is done there; otherwise its
    errors become one-line ManifestErrors."""

    @functools.wraps(method)
    def wrapper(self: Manifest, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            if self.fallback and not self.in_memory and _code(e) in UNWRITABLE_CODES:
                log.debug("cdhpc: %s: %s; indexing in memory", self.path, e)
                self.db.close()
                self._open_memory()
                return method(self, *args, **kwargs)
            if _code(e) in UNWRITABLE_CODES or _code(e) in CORRUPT_CODES:
                raise _unusable(self.path, e) from e
            raise

    return wrapper


class Manifest:
    """A connection to one sweep's manifest. Use as a context manager.

    `fallback` (read-only commands: status, report, export): never fail because the file cannot be
    written or healed; use an in-memory copy instead (`in_memory` tells). `memory` (--dry-run):
    always the in-memory copy. `healed` is the rebuild's result when the file was healed."""

    def __init__(self, workdir: str | Path, *, fallback: bool = False, memory: bool = False):
        self.workdir = Path(workdir)
        self.path = self.workdir / "manifest.sqlite"
        self.fallback = fallback or memory
        self.in_memory = False
        self.healed: IngestResult | None = None
        if memory or (fallback and not _writable(self.path)):
            self._open_memory()
        else:
            self._open_disk()

    def _open_disk(self) -> None:
        try:
            self.db = _connect(self.path, READER_TIMEOUT_S if self.fallback else 60)
            try:
                _check(self.db)
                _prepare(self.db)
            except BaseException:
                self.db.close()
                raise
        except _Corrupt as e:
            self._heal(str(e))
        except sqlite3.OperationalError as e:
            if _code(e) not in UNWRITABLE_CODES:
                raise
            if not self.fallback:
                raise _unusable(self.path, e) from e
            self._open_memory()

    def _open_memory(self) -> None:
        """An in-memory copy of the file (when it is intact and readable), else an empty index."""
        self.in_memory = True
        self.db = _connect(":memory:", 0)
        if self.path.is_file():
            try:
                self._copy_into(self.db)
            except (_Corrupt, sqlite3.OperationalError) as e:  # then every file is indexed from scratch
                if isinstance(e, _Corrupt):
                    self._warn_in_memory(str(e))
                self.db.close()
                self.db = _connect(":memory:", 0)
        _prepare(self.db)

    def _warn_in_memory(self, why: str) -> None:
        log.warning("cdhpc: %s is corrupt (%s); indexing the receipts and job records in memory this time "
                    "(cdhpc manifest rebuild repairs the file)", self.path, why)

    def _copy_into(self, dest: sqlite3.Connection) -> None:
        """Copy the file, opened read-only, into `dest` (a hot journal on a read-only disk makes
        this fail: then every file is ingested instead)."""
        src = _connect(f"{self.path.resolve().as_uri()}?mode=ro", READER_TIMEOUT_S, uri=True)
        try:
            _check(src)
            src.backup(dest)
        finally:
            src.close()

    def _heal(self, why: str) -> None:
        """Move the corrupt file aside and rebuild it from the files, holding the workdir's lock
        (taken here unless this process holds it); without the lock, fallback readers index in
        memory and writers stop with one line."""
        from cdhpc.lock import WorkdirBusy, WorkdirLock, error_line

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
            self.db = _connect(":memory:", 0)
            _prepare(self.db)
            return
        try:
            aside = move_aside(self.path)
            self.db = _connect(self.path, READER_TIMEOUT_S if self.fallback else 60)
            _prepare(self.db)
            self.healed = self._rebuild()
        finally:
            lock.release()
        log.warning("cdhpc: %s was corrupt (%s); moved it to %s and rebuilt it from the receipts and job records",
                    self.path, why, aside)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------------------
    @_writes
    def register_plan(self, specs: Iterable[dict[str, Any]]) -> None:
        """Replace the steps table with the sweep's current plan (dicts of StepSpec.to_dict())."""
        self._register_plan(specs)

    def _register_plan(self, specs: Iterable[dict[str, Any]]) -> None:
        rows = [(s["key"], s["stage"], s["name"], f"{s['stage']}/{s['name']}-{s['key'][:8]}", i,
                 json.dumps(s, sort_keys=True)) for i, s in enumerate(specs)]
        with self._tx():
            self.db.execute("DELETE FROM steps")
            self.db.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?)", rows)

    @_writes
    def ingest(self) -> IngestResult:
        """Index receipts and job records that are new or changed since the last ingest."""
        return self._ingest()

    def _ingest(self) -> IngestResult:
        result = IngestResult()
        with self._tx():
            result.receipts = self._ingest_dir("receipts", self._put_receipt, result.bad)
            result.jobs = self._ingest_dir("jobs", self._put_job, result.bad)
        return result

    @_writes
    def ingest_paths(self, rel_paths: list[str]) -> set[str]:
        """Ingest only the given receipts/ or jobs/ files (new, rewritten or removed), without
        listing the workdir: the rows a full ingest would write. Returns the keys whose rows
        changed. Unreadable files are skipped here; full ingests report them."""
        keys: set[str] = set()
        with self._tx():
            for rel in rel_paths:
                table = "receipts" if rel.startswith("receipts/") else "jobs"
                old = self.db.execute(f"SELECT key, mtime_ns, size FROM {table} WHERE path = ?", (rel,)).fetchone()
                keys.update([old[0]] if old else [])
                try:
                    st = os.stat(self.workdir / rel)
                except FileNotFoundError:
                    self._forget(table, rel)
                    continue
                if old is None or (old[1], old[2]) != (st.st_mtime_ns, st.st_size):
                    try:
                        (self._put_receipt if table == "receipts" else self._put_job)(self.workdir / rel, rel, st)
                    except (ReceiptError, ValueError, KeyError):
                        continue
                new = self.db.execute(f"SELECT key FROM {table} WHERE path = ?", (rel,)).fetchone()
                keys.update([new[0]] if new else [])
        return keys

    @_writes
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
        plan = self.workdir / "plan.json"
        if plan.is_file():
            self._register_plan(json.loads(plan.read_text())["steps"])
        return self._ingest()

    def _tx(self) -> sqlite3.Connection:
        return _Transaction(self.db)

    def _ingest_dir(self, sub: str, put: Any, bad: list[str]) -> int:
        """Index new or changed files of receipts/ or jobs/ and forget removed ones. Files are
        compared by (mtime, size) with what was indexed: os.scandir, no per-file Path objects."""
        table = "receipts" if sub == "receipts" else "jobs"
        seen = {r["path"]: (r["mtime_ns"], r["size"]) for r in self.db.execute(f"SELECT path, mtime_ns, size FROM {table}")}
        files = {}
        root = self.workdir / sub
        for stage in (os.scandir(root) if root.is_dir() else ()):
            if stage.is_dir():
                for e in os.scandir(stage.path):
                    if e.name.endswith(".json"):
                        st = e.stat()
                        files[f"{sub}/{stage.name}/{e.name}"] = st
        n = 0
        for gone in seen.keys() - files.keys():
            self._forget(table, gone)
            n += 1
        for rel in sorted(files):
            st = files[rel]
            if seen.get(rel) == (st.st_mtime_ns, st.st_size):
                continue
            try:
                put(self.workdir / rel, rel, st)
                n += 1
            except (ReceiptError, ValueError, KeyError) as e:
                bad.append(str(e))
        return n

    def _put_receipt(self, f: Path, rel: str, st: Any) -> None:
        r: Receipt = read_receipt(f)
        for table, rows in r.rows.items():
            if table not in ROW_TABLES:
                raise ReceiptError(f"{f}: rows for unknown table {table!r} (known: {', '.join(ROW_TABLES)})")
            for row in rows:
                extra = set(row) - set(ROW_TABLES[table])
                if extra:
                    raise ReceiptError(f"{f}: rows.{table} has unknown fields {sorted(extra)}")
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

    def _forget(self, table: str, rel: str) -> None:
        """A receipt or job record file was removed: drop what was derived from it."""
        for (key,) in self.db.execute(f"SELECT key FROM {table} WHERE path = ?", (rel,)).fetchall():
            if table == "receipts":
                self._delete_key(key)
            else:
                self.db.execute("DELETE FROM jobs WHERE key = ?", (key,))

    def _delete_key(self, key: str) -> None:
        for table in ("receipts", "outputs", *ROW_TABLES):
            self.db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))

    def _put_job(self, f: Path, rel: str, st: Any) -> None:
        try:
            rec = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not a valid job record ({e.msg} at line {e.lineno})") from None
        self.db.execute(f"INSERT OR REPLACE INTO jobs VALUES ({','.join('?' * (len(JOB_FIELDS) + 4))})",
                        (rec["key"], *(rec.get(k) for k in JOB_FIELDS), rel, st.st_mtime_ns, st.st_size))

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


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (one writer at a time, readers unblocked)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            self.db.execute("ROLLBACK")

"""The manifest's SQLite file and the stamps of the files it indexes: schema, integrity check,
error codes, moving a corrupt file aside, transactions; and the (mtime, size, sha256) stamps by
which an ingest skips what has not changed since it last looked (``cdhpc.sweep.manifest`` uses them)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cdhpc")

SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (key TEXT PRIMARY KEY, stage TEXT NOT NULL, name TEXT NOT NULL,
    dir TEXT NOT NULL, ord INTEGER NOT NULL, gpus INTEGER NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stamps (path TEXT PRIMARY KEY, mtime_ns INTEGER, size INTEGER, sha256 TEXT);
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
CREATE INDEX IF NOT EXISTS steps_heads ON steps (ord, key, stage, name, gpus);
"""
SCHEMA_NAMES = {
    "steps",
    "stamps",
    "receipts",
    "outputs",
    "checkpoints",
    "shards",
    "scores",
    "jobs",
    "steps_stage",
    "steps_heads",
}

CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
UNWRITABLE_CODES = {
    5: "another process is writing it: wait for it, then run the same command again",  # BUSY
    6: "another process is writing it: wait for it, then run the same command again",  # LOCKED
    8: "it cannot be written: check the permissions and the filesystem of the workdir",  # READONLY
    10: "disk I/O error: check the filesystem of the workdir",  # IOERR
    13: "the disk is full: free space, then run the same command again (re-running is safe)",  # FULL
    14: "it cannot be opened for writing: check the permissions of the workdir",
}  # CANTOPEN


class ManifestError(Exception):
    """The manifest cannot be used; the message is one line naming the file and what to do."""


class Corrupt(Exception):
    """The file is not an intact SQLite database (the message says why)."""


def sqlite_code(e: sqlite3.Error) -> int:
    return (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF


def connect(target: str | Path, timeout: float, uri: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(target, timeout=timeout, isolation_level=None, uri=uri)
    db.row_factory = sqlite3.Row
    return db


def check(db: sqlite3.Connection) -> None:
    """Raise Corrupt unless the database passes PRAGMA quick_check (~20 ms at 10,000 steps)."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and sqlite_code(e) not in CORRUPT_CODES:
            raise
        raise Corrupt(str(e)) from e
    if [tuple(r) for r in rows] != [("ok",)]:
        raise Corrupt(str(rows[0][0]) if rows else "quick_check returned nothing")


def prepare(db: sqlite3.Connection) -> None:
    """Create missing tables; a current manifest is not written (so it opens on a read-only disk)."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
    if cols and "mem_gb" not in cols:  # a manifest of an older cdhpc: job rows are re-derived
        db.execute("DROP TABLE jobs")
    cols = [r[1] for r in db.execute("PRAGMA table_info(steps)")]
    if cols and "gpus" not in cols:  # an older cdhpc's steps table (and so no stamps): registered again
        db.execute("DROP TABLE steps")
    have = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    if not have >= SCHEMA_NAMES:
        db.executescript(SCHEMA)


def writable(path: Path) -> bool:
    """The manifest (or, while it does not exist, its directory) can be written by this process."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def unusable(path: Path, e: sqlite3.Error) -> ManifestError:
    advice = UNWRITABLE_CODES.get(
        sqlite_code(e), "it is corrupt: run cdhpc manifest rebuild (it is rebuilt from the receipts)"
    )
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


def writes(method: Any) -> Any:
    """A write: in fallback mode, a database that turns out unwritable (or locked by another
    writer) is replaced by an in-memory copy and the write is done there; otherwise its
    errors become one-line ManifestErrors."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            if self.fallback and not self.in_memory and sqlite_code(e) in UNWRITABLE_CODES:
                log.debug("cdhpc: %s: %s; indexing in memory", self.path, e)
                self.db.close()
                self._open_memory()
                return method(self, *args, **kwargs)
            if sqlite_code(e) in UNWRITABLE_CODES or sqlite_code(e) in CORRUPT_CODES:
                raise unusable(self.path, e) from e
            raise

    return wrapper


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (one writer at a time, readers unblocked)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            self.db.execute("ROLLBACK")


Stamp = tuple  # (mtime_ns, size, sha256) of a file, as the stamps table holds it
RACY_NS = 2_000_000_000  # a directory changed this recently is listed again at the next ingest (ns)


def read_stamped(path: Path) -> tuple[bytes, Stamp]:
    """A file's bytes and the stamp of exactly those bytes (fstat of the same open file)."""
    with open(path, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    return data, (st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())


def stamp_if_same(path: Path, specs: list[dict[str, Any]]) -> Stamp | None:
    """plan.json's stamp when its steps are `specs` (a launcher registers what it read from it);
    None when it is missing, unreadable or different."""
    try:
        data, stamp = read_stamped(path)
        return stamp if json.loads(data)["steps"] == specs else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mtime_ns(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def step_gpus(spec: dict[str, Any]) -> int:
    """Pure: the GPUs one step holds (gpus_per_node x nodes)."""
    res = spec.get("resources") or {}
    return int(res.get("gpus_per_node") or 0) * int(res.get("nodes") or 1)

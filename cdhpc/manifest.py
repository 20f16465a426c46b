"""The manifest: ``workdir/manifest.sqlite``, the only SQL in cdhpc.

Every row is derived from files the steps and the scheduler write (``plan.json``, receipts, job
records), so the database can be deleted and rebuilt without losing anything. Only the launcher,
``cdhpc status`` and ``cdhpc export`` open it; steps never do (SQLite locking is unsafe on the
network filesystems compute nodes share).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cdhpc.receipts import Receipt, ReceiptError, read_receipt

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


class Manifest:
    """A connection to one sweep's manifest. Use as a context manager."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / "manifest.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        cols = [r[1] for r in self.db.execute("PRAGMA table_info(jobs)")]
        if cols and "mem_gb" not in cols:  # a manifest of an older cdhpc: job rows are re-derived
            self.db.execute("DROP TABLE jobs")
        self.db.executescript(SCHEMA)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------------------
    def register_plan(self, specs: Iterable[dict[str, Any]]) -> None:
        """Replace the steps table with the sweep's current plan (dicts of StepSpec.to_dict())."""
        rows = [(s["key"], s["stage"], s["name"], f"{s['stage']}/{s['name']}-{s['key'][:8]}", i,
                 json.dumps(s, sort_keys=True)) for i, s in enumerate(specs)]
        with self._tx():
            self.db.execute("DELETE FROM steps")
            self.db.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?)", rows)

    def ingest(self) -> IngestResult:
        """Index receipts and job records that are new or changed since the last ingest."""
        result = IngestResult()
        with self._tx():
            result.receipts = self._ingest_dir("receipts", self._put_receipt, result.bad)
            result.jobs = self._ingest_dir("jobs", self._put_job, result.bad)
        return result

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

    def rebuild(self) -> IngestResult:
        """Drop every derived row and ingest all files again."""
        with self._tx():
            for table in ("receipts", "outputs", "jobs", *ROW_TABLES):
                self.db.execute(f"DELETE FROM {table}")
        plan = self.workdir / "plan.json"
        if plan.is_file():
            self.register_plan(json.loads(plan.read_text())["steps"])
        return self.ingest()

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
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

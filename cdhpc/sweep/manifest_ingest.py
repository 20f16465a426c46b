"""Indexing a workdir's receipts and job records into the manifest's tables (`Indexer`: one
ingest pass inside the caller's transaction; `cdhpc.sweep.manifest.Manifest.ingest` runs it). Only
stage directories whose mtime changed are listed, and in them only files whose (mtime, size)
changed are read."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.sweep.jobrecords import FIELDS as JOB_FIELDS  # the jobs table's columns besides key, path, stamp
from cdhpc.sweep.manifest_db import RACY_NS, mtime_ns
from cdhpc.sweep.workdir import PLAN

# Receipt `rows` may fill these tables; their columns (besides `key`) are the allowed fields.
ROW_TABLES = {
    "checkpoints": ("run", "step", "path", "val_loss", "val_ppl"),
    "shards": ("method", "shard", "path", "samples", "tokens", "sha256"),
    "scores": (
        "run",
        "method",
        "seed",
        "step",
        "task",
        "score",
        "task_version",
        "data_sha256",
        "n_items",
        "path",
    ),
}


@dataclass
class IngestResult:
    receipts: int = 0
    jobs: int = 0
    bad: list[str] = field(default_factory=list)
    keys: set[str] = field(
        default_factory=set
    )  # steps whose receipt or job rows were added, changed or dropped


class Indexer:
    """One ingest pass over `root`'s receipts/ and jobs/ into the connection `db` (the caller
    holds the transaction)."""

    def __init__(self, db: sqlite3.Connection, root: Path):
        self.db, self.root = db, root

    def ingest(self, full: bool = False) -> IngestResult:
        """Index receipts and job records that are new or changed since the last ingest; `full`
        lists every directory, not only those whose mtime changed."""
        result = IngestResult()
        if full:
            self.db.execute("DELETE FROM stamps WHERE path != ?", (PLAN,))
        settled = time.time_ns() - RACY_NS
        result.receipts = self._ingest_dir("receipts", self._put_receipt, result, settled)
        result.jobs = self._ingest_dir("jobs", self._put_job, result, settled)
        return result

    def _ingest_dir(self, sub: str, put: Any, result: IngestResult, settled: int) -> int:
        """Index receipts/ or jobs/: only stage directories whose mtime changed since they were
        last listed (a receipt or job record is written by rename, which changes it), and in them
        only files whose (mtime, size) changed; rows of removed files are dropped. A directory
        changed after `settled` (ns), or holding a file that could not be read, is listed again
        next time: two renames within one timestamp tick leave its mtime unchanged."""
        root = self.root / sub
        stamps = dict(
            self.db.execute(
                "SELECT path, mtime_ns FROM stamps WHERE path = ? OR path GLOB ?", (sub, f"{sub}/*")
            )
        )
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
        gone = [
            rel
            for (rel,) in self.db.execute(f"SELECT path FROM {sub}").fetchall()
            if rel.split("/")[1] not in present
        ]
        for rel in gone:
            result.keys.update(self._forget(sub, rel))
        self.db.executemany(
            "DELETE FROM stamps WHERE path = ?",
            [(rel,) for rel in stamps if rel != sub and rel.split("/", 1)[1] not in present],
        )
        return len(gone)

    def _ingest_stage(self, sub: str, rel_dir: str, put: Any, result: IngestResult) -> int:
        """Index one stage directory's new or changed files (os.scandir, one stat per entry)."""
        bad = len(result.bad)
        seen = {
            r[0]: (r[1], r[2])
            for r in self.db.execute(
                f"SELECT path, mtime_ns, size FROM {sub} WHERE path > ? AND path < ?",
                (rel_dir + "/", rel_dir + "0"),
            )
        }
        files = {}
        try:
            for e in os.scandir(self.root / rel_dir):
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
            from cdhpc.sweep.receipts import (
                ReceiptError,  # here: it imports pydantic, which `cdhpc status` may not need
            )
        for rel in todo:
            st = files[rel]
            old = (
                self.db.execute(f"SELECT key FROM {sub} WHERE path = ?", (rel,)).fetchall()
                if rel in seen
                else []
            )
            try:
                result.keys.add(put(self.root / rel, rel, st))
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
        self.db.execute(
            "INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.key,
                r.stage,
                r.name,
                r.status,
                rel,
                st.st_mtime_ns,
                st.st_size,
                r.started,
                r.finished,
                r.finished - r.started,
                r.host,
                r.attempt,
                r.error,
                r.logs.get("stdout"),
                r.logs.get("stderr"),
                json.dumps(r.slurm, sort_keys=True),
                json.dumps(r.metrics, sort_keys=True),
            ),
        )
        self.db.executemany(
            "INSERT INTO outputs VALUES (?,?,?,?,?)",
            [(r.key, o.path, o.sha256, o.bytes, o.mtime_ns) for o in r.outputs],
        )
        for table, rows in r.rows.items():
            cols = ("key",) + ROW_TABLES[table]
            self.db.executemany(
                f"INSERT OR REPLACE INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                [(r.key, *(row.get(c) for c in ROW_TABLES[table])) for row in rows],
            )
        return r.key

    def _forget(self, table: str, rel: str) -> list[str]:
        """A receipt or job record file was removed: drop what was derived from it; its keys."""
        keys = [
            key for (key,) in self.db.execute(f"SELECT key FROM {table} WHERE path = ?", (rel,)).fetchall()
        ]
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
        self.db.execute(
            f"INSERT OR REPLACE INTO jobs (key, {', '.join(JOB_FIELDS)}, path, mtime_ns, size) VALUES "
            f"({','.join('?' * (len(JOB_FIELDS) + 4))})",  # lenient: a field an older record lacks is NULL
            (rec["key"], *(rec.get(k) for k in JOB_FIELDS), rel, st.st_mtime_ns, st.st_size),
        )
        return rec["key"]

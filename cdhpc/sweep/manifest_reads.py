"""The manifest reads behind ``cdhpc status`` and the terminal UI: the rows of every step or of
the steps that changed, file stamps to tell what another process ingested, and the outputs rows
whose files moved. SQL of the manifest lives here and in `cdhpc.sweep.manifest` only.

Functions take the open connection (`Manifest.db`). At the paper's size (46k steps, ~200k rows)
each column read costs 5-15 ms, so ``cdhpc status --once`` reads the light columns."""

from __future__ import annotations

import sqlite3
from operator import itemgetter
from typing import Any

RECEIPT_COLUMNS = (
    "key, stage, name, status, started, finished, runtime_s, host, attempt, error, stdout, stderr, "
    "mtime_ns, size"
)
JOB_COLUMNS = "*"
# the light read (`cdhpc status --once`): receipt times, what a SLURM poll needs of job records, no
# file stamps; the failed steps' errors are read by `receipt_rows`
LIGHT_RECEIPT_COLUMNS = "key, status, started, finished, runtime_s"
LIGHT_JOB_COLUMNS = "key, state, executor, submitted, job_id, array_index, path"  # hot first
BULK_KEYS = 2000  # more keys than this: read every row (faster, and within SQLite's variable limit)


def data_version(db: sqlite3.Connection) -> int:
    """SQLite's PRAGMA data_version: it changes when another connection commits."""
    return db.execute("PRAGMA data_version").fetchone()[0]


def where(keys: list[Any], column: str = "key") -> str:
    return f" WHERE {column} IN ({','.join('?' * len(keys))})"


def by_key(rows: list[Any]) -> dict[str, Any]:
    return dict(zip(map(itemgetter(0), rows), rows))  # no Python loop per row


def status_rows(
    db: sqlite3.Connection, keys: list[str] | None = None, light: bool = False
) -> dict[str, dict]:
    """The rows the status views need, by table then key (of the given steps only, if `keys`):
    receipts, jobs, the last checkpoint's val_ppl, shard tokens, scores (`light`: fewer receipt
    and job columns, no val_ppl or scores)."""
    cond = "" if keys is None else where(keys)
    args = keys or []
    receipt_cols, job_cols = (
        (LIGHT_RECEIPT_COLUMNS, LIGHT_JOB_COLUMNS) if light else (RECEIPT_COLUMNS, JOB_COLUMNS)
    )

    def q(sql: str) -> Any:
        return db.execute(sql.format(where=cond), args)

    return {
        "receipts": by_key(q(f"SELECT {receipt_cols} FROM receipts{{where}}").fetchall()),
        "jobs": by_key(q(f"SELECT {job_cols} FROM jobs{{where}}").fetchall()),
        "val_ppl": {} if light else dict(q("SELECT key, val_ppl FROM checkpoints{where} ORDER BY key, step")),
        "tokens": dict(q("SELECT key, SUM(tokens) FROM shards{where} GROUP BY key")),
        "scores": {} if light else dict(q("SELECT key, score FROM scores{where}")),
    }


def receipt_rows(db: sqlite3.Connection, keys: list[str]) -> dict[str, Any]:
    """Every column of the given steps' receipt rows, by key."""
    return by_key(db.execute(f"SELECT * FROM receipts{where(keys)}", keys).fetchall()) if keys else {}


def file_stamps(db: sqlite3.Connection, table: str) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of the file behind each row of `receipts` or `jobs`, by key."""
    return {k: (t, n) for k, t, n in db.execute(f"SELECT key, mtime_ns, size FROM {table}")}


def moved_output_rows(db: sqlite3.Connection, root: str, keys: list[str]) -> list[tuple]:
    """The outputs rows (key, path, sha256, bytes, mtime_ns) of the given steps whose file is
    missing or changed size or mtime (`cdhpc.sweep.stepstate.moved_outputs`): one stat per output
    and no hash, in one read transaction."""
    from cdhpc.sweep.stepstate import moved_outputs

    cur = db.cursor()
    cur.row_factory = None  # plain tuples: ~40k rows at the paper's size
    sql = "SELECT rowid, path, bytes, mtime_ns FROM outputs"
    cur.execute("BEGIN")  # one read: the rowids below name the rows read here
    try:
        stamps = (
            cur.execute(sql) if len(keys) > BULK_KEYS else cur.execute(f"{sql}{where(keys)}", keys)
        ).fetchall()
        ids = [
            stamps[i][0] for i in moved_outputs(root, [s[1] for s in stamps], map(itemgetter(2, 3), stamps))
        ]
        chunks = [ids[i : i + BULK_KEYS] for i in range(0, len(ids), BULK_KEYS)]
        sql = "SELECT key, path, sha256, bytes, mtime_ns FROM outputs"
        return [row for chunk in chunks for row in cur.execute(f"{sql}{where(chunk, 'rowid')}", chunk)]
    finally:
        cur.execute("COMMIT")

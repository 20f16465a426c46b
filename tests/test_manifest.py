"""Receipts and the manifest: atomic, concurrent writers, rebuild equals ingest, bad receipts reported."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from cdhpc.base.atomicio import atomic_dir, atomic_write_text
from cdhpc.sweep.manifest import Manifest
from cdhpc.sweep.receipts import (
    Receipt,
    ReceiptError,
    describe_outputs,
    read_receipt,
    receipt_path,
    write_receipt,
)
from cdhpc.sweep.stepstate import output_ok

TABLES = ("receipts", "outputs", "checkpoints", "shards", "scores", "jobs")


def make_receipt(workdir: Path, i: int) -> Receipt:
    out = workdir / "evaluate" / f"step{i}"
    atomic_write_text(out / "summary.json", f'{{"score": {i}}}')
    return Receipt(
        key=f"{i:016x}",
        stage="evaluate",
        name=f"run-step{i}-blimp",
        status="ok",
        spec={"stage": "evaluate", "name": f"run-step{i}-blimp", "key": f"{i:016x}", "params": {}},
        outputs=describe_outputs(workdir, [out]),
        metrics={"score": i},
        rows={
            "scores": [
                {
                    "run": "run",
                    "method": "m",
                    "seed": 1,
                    "step": i,
                    "task": "blimp",
                    "score": float(i),
                    "task_version": "1",
                    "data_sha256": "ab",
                    "n_items": 10,
                }
            ],
            "checkpoints": [{"run": "run", "step": i, "path": "x", "val_loss": 1.0, "val_ppl": 2.7}],
        },
        started=time.time(),
        finished=time.time(),
    )


def _writer(args):
    workdir, i = args
    write_receipt(workdir, make_receipt(Path(workdir), i))


def dump(m: Manifest) -> dict[str, list]:
    return {t: sorted(tuple(r.values()) for r in m.rows(t)) for t in TABLES}


@pytest.mark.slow
def test_64_concurrent_writers_then_one_ingest(tmp_path):
    with mp.get_context("fork").Pool(16) as pool:
        pool.map(_writer, [(str(tmp_path), i) for i in range(64)], chunksize=1)
    with Manifest(tmp_path) as m:
        result = m.ingest()
        assert result.receipts == 64 and not result.bad
        assert len(m.rows("receipts")) == 64 and len(m.rows("scores")) == 64
        assert sorted(r["step"] for r in m.rows("scores")) == list(range(64))
        assert m.ingest().receipts == 0  # nothing new: unchanged files are not re-read


def test_rebuild_from_receipts_gives_the_same_rows(tmp_path):
    for i in range(5):
        write_receipt(tmp_path, make_receipt(tmp_path, i))
    (tmp_path / "jobs" / "evaluate").mkdir(parents=True)
    atomic_write_text(
        tmp_path / "jobs" / "evaluate" / "j.json",
        '{"key": "0000000000000001", "executor": "local", "job_id": "12", "state": "COMPLETED", '
        '"attempt": 1}',
    )
    with Manifest(tmp_path) as m:
        m.ingest()
        before = dump(m)
    (tmp_path / "manifest.sqlite").unlink()
    with Manifest(tmp_path) as m:
        m.rebuild()
        assert dump(m) == before
        assert len(before["jobs"]) == 1


def test_truncated_receipt_is_reported_not_ingested(tmp_path):
    write_receipt(tmp_path, make_receipt(tmp_path, 1))
    path = write_receipt(tmp_path, make_receipt(tmp_path, 2))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ReceiptError, match="not a valid receipt"):
        read_receipt(path)
    with Manifest(tmp_path) as m:
        result = m.ingest()
        assert result.receipts == 1 and len(result.bad) == 1 and str(path) in result.bad[0]
        assert [r["step"] for r in m.rows("scores")] == [1]


def test_receipt_rows_for_unknown_tables_are_rejected(tmp_path):
    r = make_receipt(tmp_path, 3).model_copy(update={"rows": {"scroes": [{"x": 1}]}})
    write_receipt(tmp_path, r)
    with Manifest(tmp_path) as m:
        assert "unknown table 'scroes'" in m.ingest().bad[0]


def test_outputs_detect_corruption(tmp_path):
    r = make_receipt(tmp_path, 4)
    out = r.outputs[0]

    def intact() -> bool:
        return output_ok(str(tmp_path), out.path, out.sha256, out.bytes, out.mtime_ns)

    assert intact()
    f = tmp_path / out.path
    f.write_text(f.read_text().replace("4", "5"))  # same size, new content, new mtime
    assert not intact()
    f.unlink()
    assert not intact()


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ckpt") as d:
            (d / "a.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "ckpt") as d:
        (d / "a.bin").write_bytes(b"y")
    assert (tmp_path / "ckpt" / "a.bin").read_bytes() == b"y"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_receipt_path_layout(tmp_path):
    assert (
        receipt_path(tmp_path, "pretrain", "baseline-s1", "0123456789abcdef")
        == tmp_path / "receipts" / "pretrain" / "baseline-s1-01234567.json"
    )


def test_corrupt_manifest_is_not_healed_under_another_holder_of_the_workdir(tmp_path, caplog):
    """While another process (here: a second descriptor, as a launcher would hold it) holds the
    workdir's lock, a writer stops with one line and a reader indexes in memory; the file stays."""
    import fcntl
    import json
    import os

    from cdhpc.sweep.lock import LOCK_FILE
    from cdhpc.sweep.manifest_db import ManifestError

    for i in range(3):
        write_receipt(tmp_path, make_receipt(tmp_path, i))
    (tmp_path / "manifest.sqlite").write_bytes(b"not a database" * 100)
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(
            fd,
            json.dumps(
                {"host": "login2", "pid": 99, "since": 0, "command": "python -m cdhpc.launch"}
            ).encode(),
        )
        with pytest.raises(
            ManifestError,
            match=r"manifest.sqlite is corrupt \(file is not a database\) and cannot be "
            r"rebuilt now: .* is in use by pid 99 on login2 since ",
        ):
            Manifest(tmp_path)
        with Manifest(tmp_path, fallback=True) as m:
            assert m.in_memory and m.ingest().receipts == 3 and len(m.rows("scores")) == 3
    finally:
        os.close(fd)
    assert "indexing the receipts and job records in memory this time" in caplog.text
    assert (tmp_path / "manifest.sqlite").read_bytes() == b"not a database" * 100
    assert not list(tmp_path.glob("manifest.sqlite.corrupt-*"))


def test_a_job_record_is_one_type_whose_fields_are_the_manifests_columns(tmp_path):
    """JobRecord writes what the manifest indexes, reads back equal, and refuses a file that
    lacks a field; the jobs table has exactly its fields (besides key, path and the stamp)."""
    import sqlite3

    from cdhpc.sweep.jobrecords import FIELDS, JobRecord
    from cdhpc.sweep.manifest_db import SCHEMA

    rec = JobRecord(
        "k" * 16, "slurm", "712", "PENDING", 1, 10.0, 11.0, 3, "o.log", "e.log", "cdhpc.s.x.1", 2.0
    )
    path = tmp_path / "r.json"
    rec.write(path)
    assert JobRecord.read(path) == rec
    path.write_text('{"key": "k", "executor": "local"}')
    with pytest.raises(ValueError, match="not a job record"):
        JobRecord.read(path)
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    assert sorted(columns) == sorted(("key", *FIELDS, "path", "mtime_ns", "size"))

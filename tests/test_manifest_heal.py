"""A corrupt manifest.sqlite heals itself: every command that opens it (status, manifest rebuild, a
relaunch, export) moves it aside to manifest.sqlite.corrupt-<UTC time> with one warning line and
rebuilds it from the receipts and job records. Read-only commands on a workdir they cannot write
(a read-only bind mount; another writer's lock) work from an in-memory copy and write nothing."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdhpc.benchmarks.status import build_workdir, naive_refresh, write_step
from cdhpc.sweep.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("receipts", "outputs", "scores", "shards", "jobs", "steps")


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its size, mtime and content hash: equal trees, nothing written."""
    return {
        str(p.relative_to(root)): (
            p.lstat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
        )
        for p in sorted(root.rglob("*"))
    }


def corrupt(path: Path, how: str) -> bytes:
    """Garbage bytes over the manifest, or the manifest cut in half; returns what was written."""
    data = path.read_bytes()
    bad = bytes(range(256)) * 16 if how == "garbage" else data[: len(data) // 2]
    path.write_bytes(bad)
    return bad


def rows(workdir: Path) -> dict[str, list]:
    db = sqlite3.connect(workdir / "manifest.sqlite")
    try:
        assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        return {t: sorted(map(tuple, db.execute(f"SELECT * FROM {t}"))) for t in TABLES}
    finally:
        db.close()


def aside(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("manifest.sqlite.corrupt-*"))


def status_once(workdir: Path, *prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A synthetic workdir of 60 steps (48 done, 3 failed) with an ingested manifest."""
    workdir = tmp_path / "sweep"
    build_workdir(workdir, 60)
    with Manifest(workdir) as m:
        m.rebuild()
    return workdir


def _warning(workdir: Path, why: str, moved: Path) -> str:
    return (
        f"cdhpc: {workdir / 'manifest.sqlite'} was corrupt ({why}); moved it to {moved} and rebuilt it from "
        "the receipts and job records"
    )


def table_once(workdir: Path, capsys) -> tuple[int, str]:
    """`cdhpc status --once` in this process (faster than a subprocess): exit status, table."""
    from cdhpc.cli import main

    capsys.readouterr()
    rc = main(["status", str(workdir), "--once"])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_status_once_heals_a_corrupt_manifest(sweep, how, capsys):
    good, want = table_once(sweep, capsys), rows(sweep)
    bad = corrupt(sweep / "manifest.sqlite", how)
    out = status_once(sweep)
    assert (out.returncode, out.stdout) == good  # the same table
    (moved,) = aside(sweep)
    assert moved.read_bytes() == bad and moved.name.startswith("manifest.sqlite.corrupt-20")
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"cdhpc: {sweep / 'manifest.sqlite'} was corrupt (") and line.endswith(
        f"moved it to {moved} and rebuilt it from the receipts and job records"
    )
    assert rows(sweep) == want


def test_status_once_heals_a_manifest_only_quick_check_finds_corrupt(sweep, capsys, caplog):
    """Header and schema intact, the receipts table's root page garbage: only PRAGMA quick_check
    at the open finds it, and the file is healed before anything is read or written: the same
    table, the corrupt bytes moved aside as they were."""
    good = table_once(sweep, capsys)
    path = sweep / "manifest.sqlite"
    db = sqlite3.connect(path)
    page_size, root = (
        db.execute("PRAGMA page_size").fetchone()[0],
        db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'receipts'").fetchone()[0],
    )
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = bytes(range(256)) * (page_size // 256)
    path.write_bytes(data)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA schema_version").fetchone()
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        db.execute("PRAGMA quick_check").fetchall()
    db.close()
    assert table_once(sweep, capsys) == good
    (moved,) = aside(sweep)
    assert moved.read_bytes() == bytes(data)
    (line,) = _warned(caplog)
    assert line.startswith(f"cdhpc: {path} was corrupt (") and line.endswith(
        f"moved it to {moved} and rebuilt it from the receipts and job records"
    )


def _warned(caplog) -> list[str]:
    """The cdhpc warnings logged (in a `cdhpc` process they are stderr lines)."""
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_manifest_rebuild_always_works(sweep, capsys, caplog):
    from cdhpc.cli import main

    want = rows(sweep)
    corrupt(sweep / "manifest.sqlite", "garbage")
    assert main(["manifest", "rebuild", str(sweep)]) == 0
    out = capsys.readouterr()
    (moved,) = aside(sweep)
    assert _warned(caplog) == [_warning(sweep, "file is not a database", moved)] and out.err == ""
    assert json.loads(out.out) == {"receipts": 51, "jobs": 51, "bad": 0}
    assert rows(sweep) == want
    db = sqlite3.connect(sweep / "manifest.sqlite")  # a manifest of another schema: rebuilt, not patched
    db.executescript(
        "DROP TABLE receipts; CREATE TABLE receipts (key TEXT, colour TEXT); DROP TABLE outputs;"
    )
    db.close()
    assert main(["manifest", "rebuild", str(sweep)]) == 0
    assert rows(sweep) == want and len(aside(sweep)) == 1


def test_relaunch_heals_a_corrupt_manifest_and_reruns_nothing(sweep, caplog):
    """The launcher's diff-and-run (launch.execute, which `python -m cdhpc.launch` runs under the
    workdir's lock) on a finished plan; the slow test below relaunches the real tiny sweep."""
    from cdhpc.sweep.plan import Plan, StepSpec
    from cdhpc.ui.launch import execute

    steps = json.loads((sweep / "plan.json").read_text())["steps"]
    done = Plan([StepSpec.from_dict(s) for i, s in enumerate(steps) if i % 20 < 16])
    want = rows(sweep)
    corrupt(sweep / "manifest.sqlite", "truncated")
    summary = execute(sweep, done, max_parallel=1, retries=0, poll_s=0.1)
    assert sorted(summary.done) == sorted(s.key for s in done.steps) and not summary.failed
    (moved,) = aside(sweep)
    assert _warned(caplog) == [_warning(sweep, "database disk image is malformed", moved)]
    assert rows(sweep) == want
    assert not (sweep / "logs").exists()  # no job was started


def read_only_status(workdir: Path) -> subprocess.CompletedProcess:
    """`cdhpc status --once` with the workdir bind-mounted read-only over itself (EROFS even for
    root, unlike chmod), in a private mount namespace; skips where that is not allowed."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a read-only bind mount")
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; '
        'touch "$1/.probe" 2>/dev/null && exit 98; shift; exec "$@"'
    )
    out = status_once(workdir, "unshare", "-m", "sh", "-c", script, "sh", str(workdir))
    if out.returncode == 97 or "unshare failed" in out.stderr:
        pytest.skip(
            f"no read-only bind mount here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()[-200:]}"
        )
    assert out.returncode != 98, "the bind mount is writable"
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "manifest", ["stale", "corrupt"]
)  # corrupt: an empty index in memory, every file ingested
def test_status_once_on_a_read_only_workdir_writes_nothing(sweep, manifest, capsys):
    stale = (sweep / "manifest.sqlite").read_bytes()
    write_step(sweep, json.loads((sweep / "plan.json").read_text())["steps"][57], 57, "ok", time.time())
    fresh = table_once(sweep, capsys)  # the table with the new receipt, ingested into the manifest
    if manifest == "stale":  # the manifest before the new receipt: its copy in memory ingests it
        (sweep / "manifest.sqlite").write_bytes(stale)
    else:
        corrupt(sweep / "manifest.sqlite", "garbage")
    before = tree(sweep)
    out = read_only_status(sweep)
    assert (out.returncode, out.stdout) == fresh
    if manifest == "corrupt":
        assert out.stderr.splitlines() == [
            f"cdhpc: {sweep / 'manifest.sqlite'} is corrupt (file is not a database); indexing the receipts "
            "and job "
            "records in memory this time (cdhpc manifest rebuild repairs the file)"
        ]
    else:
        assert out.stderr == ""
    assert tree(sweep) == before


def test_reader_uses_a_copy_while_another_process_writes_the_manifest(sweep, monkeypatch):
    from cdhpc.sweep import manifest
    from cdhpc.ui.status import SnapshotReader

    monkeypatch.setattr(manifest, "READER_TIMEOUT_S", 0.1)
    steps = json.loads((sweep / "plan.json").read_text())["steps"]
    write_step(sweep, steps[58], 58, "ok", time.time())
    writer = sqlite3.connect(sweep / "manifest.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a launcher in the middle of an ingest
    try:
        with SnapshotReader(sweep) as reader:
            snap = reader.read()
            assert reader.in_memory
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert snap.states == naive_refresh(sweep) and snap.states[steps[58]["key"]] == "done"
    with Manifest(sweep) as m:
        assert steps[58]["key"] not in m.receipts_by_key()  # the file was not written


@pytest.mark.slow  # the report with its plots: over a second
def test_export_writes_only_results_and_report_nothing(sweep, capsys, caplog, monkeypatch):
    """export/report over the done evaluate steps; the table itself comes from a fake build_table
    (the real one needs real evaluation outputs; the tiny sweep's tests cover it)."""
    import numpy as np

    import jobs.aggregate
    from cdhpc.cli import main
    from cdhpc.results import report

    steps = json.loads((sweep / "plan.json").read_text())["steps"]
    evals = [s["key"] for s in steps if s["stage"] == "evaluate"]
    done = [s["key"] for i, s in enumerate(steps) if s["stage"] == "evaluate" and i % 20 < 16]
    agg = next(s for s in steps if s["stage"] == "aggregate")
    agg["inputs"] = {f"e{i}": key for i, key in enumerate(evals)}
    (sweep / "plan.json").write_text(
        json.dumps({"sweep": "bench-status", "until": "aggregate", "steps": steps})
    )
    seen = []

    def fake_build_table(workdir, receipts, params):
        seen.append(len(receipts))
        keys = [(m, s, 100, "blimp") for m in ("baseline", "cd") for s in (1, 2)]
        vectors = {k: np.full(4, 60.0 + (k[0] == "cd")) for k in keys}
        return report.build_paper_table(
            vectors, {k: float(v[0]) for k, v in vectors.items()}, tasks=("blimp",)
        ), None

    monkeypatch.setattr(jobs.aggregate, "build_table", fake_build_table)
    before, index = tree(sweep), rows(sweep)
    assert main(["report", str(sweep)]) == 0
    after = tree(sweep)  # the manifest's stamps may settle (manifest_db.RACY_NS); its rows may not change
    assert {p: v for p, v in after.items() if p != "manifest.sqlite"} == {
        p: v for p, v in before.items() if p != "manifest.sqlite"
    }
    assert rows(sweep) == index and "| baseline" in capsys.readouterr().out
    corrupt(sweep / "manifest.sqlite", "garbage")
    assert main(["export", str(sweep)]) == 0
    out = capsys.readouterr()
    assert seen == [len(done)] * 2 and f"PARTIAL: {len(done)} of {len(evals)} evaluate steps done" in out.out
    (moved,) = aside(sweep)
    assert _warned(caplog) == [_warning(sweep, "file is not a database", moved)]
    after = tree(sweep)
    new = sorted(set(after) - set(before))
    changed = sorted(p for p in before if p in after and before[p] != after[p])
    assert [p for p in new if not p.startswith("results")] == [".lock", moved.name]  # healed under the lock
    assert changed == ["manifest.sqlite"]
    assert sorted(p.name for p in (sweep / "results").iterdir()) == [
        "delta_rel.png",
        "paper_table.csv",
        "paper_table.md",
        "paper_table.tex",
    ]
    assert not (sweep / "export").exists()


@pytest.mark.slow
def test_relaunch_of_a_real_workdir_heals_its_manifest(tmp_path):
    workdir = tmp_path / "work"
    argv = [
        sys.executable,
        "-m",
        "cdhpc.launch",
        "configs/tiny.yaml",
        f"workdir={workdir}",
        "--until",
        "prepare",
    ]
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    want = rows(workdir)
    corrupt(workdir / "manifest.sqlite", "garbage")
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    (moved,) = aside(workdir)
    (line,) = [line for line in again.stderr.splitlines() if "corrupt" in line]
    assert line.endswith(_warning(workdir, "file is not a database", moved))  # after the log's time stamp
    assert "1 steps, 1 done, 0 to run" in again.stderr and "started prepare" not in again.stderr
    assert rows(workdir) == want

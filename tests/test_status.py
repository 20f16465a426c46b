"""cdhpc.ui.status: known answers for the pure views, and the incremental reader against a fresh one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cdhpc.benchmarks.status import build_workdir, naive_refresh, write_step
from cdhpc.ui.status import (
    Snapshot,
    SnapshotReader,
    StepRow,
    filter_rows,
    format_duration,
    partial_table,
    remaining_estimate_s,
    sort_rows,
    stage_overview,
    step_rows,
)

ROOT = Path(__file__).resolve().parents[1]


def _step(stage, name, key, params=None, gpus=0):
    return {
        "stage": stage,
        "name": name,
        "key": key,
        "params": params or {},
        "inputs": {},
        "options": {},
        "resources": {"gpus_per_node": gpus, "nodes": 1},
    }


def _receipt(key, started, runtime, status="ok", host="n1"):
    return {
        "key": key,
        "status": status,
        "started": started,
        "finished": started + runtime,
        "runtime_s": runtime,
        "host": host,
        "attempt": 1,
        "error": None,
        "stdout": None,
        "stderr": None,
    }


def test_remaining_and_duration_known_answers():
    assert remaining_estimate_s([10.0, 30.0], left=4, running=2) == 40.0  # mean 20 s x 4 / 2
    assert remaining_estimate_s([], left=3, running=1) is None
    assert remaining_estimate_s([5.0], left=0, running=0) == 0.0
    assert [format_duration(s) for s in (None, 45, 725, 11220, 187200)] == [
        "-",
        "45s",
        "12m05s",
        "3h07m",
        "2d04h",
    ]


def test_stage_overview_counts_times_gpu_hours():
    steps = [_step("pretrain", f"r{i}", f"k{i}", gpus=2) for i in range(4)] + [_step("generate", "g0", "g")]
    receipts = {"k0": _receipt("k0", 1000.0, 3600.0), "k1": _receipt("k1", 1000.0, 1800.0, status="failed")}
    jobs = {"k2": {"submitted": 900.0, "state": "RUNNING"}}
    snap = Snapshot(
        Path("."),
        steps,
        {"k0": "done", "k1": "failed", "k2": "running", "k3": "missing", "g": "done"},
        receipts | {"g": _receipt("g", 0.0, 10.0)},
        jobs,
        tokens={"g": 1234},
        now=10_000.0,
    )
    pre, gen = stage_overview(snap)
    assert (pre.stage, pre.total, pre.counts["done"], pre.counts["failed"], pre.counts["running"]) == (
        "pretrain",
        4,
        1,
        1,
        1,
    )
    assert pre.gpu_hours == pytest.approx((3600 + 1800) * 2 / 3600)  # failed runs used their GPUs too
    assert pre.elapsed_s == 10_000.0 - 900.0  # first submission to now: a step is still running
    assert pre.remaining_s == 3600.0 * 3 / 1  # 3 not done at the mean done runtime, 1 running
    assert (gen.tokens, gen.elapsed_s, gen.remaining_s) == (1234, 10.0, 0.0)


def _eval(key, method, seed, step, task, share=0.3):
    return _step(
        "evaluate",
        key,
        key,
        {"method": method, "synthetic_share": share, "seed": seed, "step": step, "task": task},
    )


def test_partial_table_mean_max_so_far():
    steps = [
        _eval("a", "base", 1, 10, "blimp", 0.0),
        _eval("b", "base", 1, 20, "blimp", 0.0),
        _eval("c", "base", 2, 10, "blimp", 0.0),
        _eval("d", "base", 2, 20, "blimp", 0.0),
        _eval("e", "cd", 1, 10, "perplexity", 0.3),
        _eval("f", "cd", 1, 20, "perplexity", 0.3),
        _eval("g", "cd", 1, 10, "perplexity", 0.5),
    ]
    scores = {"a": 60.0, "b": 70.0, "c": 80.0, "e": 9.0, "f": 7.0, "g": 8.0}
    t = partial_table(Snapshot(Path("."), steps, {}, scores=scores))
    assert t.methods == ("base", "cd@q0.3", "cd@q0.5") and t.tasks == ("blimp", "perplexity")
    assert t.cells[("base", "blimp")] == (75.0, 3, 4)  # seed 1 best 70, seed 2 best so far 80
    assert t.cells[("cd@q0.3", "perplexity")] == (7.0, 2, 2)  # perplexity keeps the lowest
    assert ("base", "perplexity") not in t.cells and not t.complete


def test_filter_and_sort_rows():
    rows = [
        StepRow("1", "pretrain", "base-s1", "done", "11", 1, "n1", 50.0, "ppl 9.10"),
        StepRow("2", "evaluate", "base-s1-blimp", "failed", "12", 2, "n2", 3.0, ""),
        StepRow("3", "evaluate", "cd-s1-blimp", "running", "13", 1, "n1", None, ""),
    ]
    assert [r.key for r in filter_rows(rows, "failed")] == ["2"]
    assert [r.key for r in filter_rows(rows, "blimp state:running")] == ["3"]
    assert [r.key for r in filter_rows(rows, "n1")] == ["1", "3"]
    assert [r.key for r in filter_rows(rows, "BASE")] == ["1", "2"]
    assert [r.key for r in sort_rows(rows, "stage")] == ["1", "2", "3"]  # pipeline order, stable
    assert [r.key for r in sort_rows(rows, "runtime_s", reverse=True)] == ["1", "2", "3"]  # empty last
    assert [r.key for r in sort_rows(rows, "runtime_s")] == ["2", "1", "3"]
    with pytest.raises(ValueError, match="cannot sort steps by 'colour'"):
        sort_rows(rows, "colour")


def test_incremental_reader_matches_fresh_read_and_naive(tmp_path):
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 200)
    reader = SnapshotReader(workdir)
    first = reader.read(ingest=False)  # an empty manifest: nothing ingested yet
    assert set(first.states.values()) == {"missing"}
    snap = reader.read()
    assert Counter(snap.states.values()) == Counter({"done": 160, "failed": 10, "missing": 30})
    assert snap.states == naive_refresh(workdir)
    write_step(workdir, steps[19], 19, "ok", time.time())  # a receipt arrives
    (
        workdir / "receipts" / steps[0]["stage"] / f"{steps[0]['name']}-{steps[0]['key'][:8]}.json"
    ).unlink()  # one is removed
    snap = reader.read()
    assert (
        snap.states[steps[19]["key"]] == "done" and snap.states[steps[0]["key"]] == "failed"
    )  # job record, no receipt
    fresh = SnapshotReader(workdir).read()
    assert snap.states == fresh.states == naive_refresh(workdir)
    assert {k: dict(v) for k, v in snap.receipts.items()} == {k: dict(v) for k, v in fresh.receipts.items()}
    assert (snap.scores, snap.tokens) == (fresh.scores, fresh.tokens)
    rows = step_rows(snap)
    assert rows[19].node == "node5" and rows[19].attempts == 1


def test_reader_verify_sees_changed_outputs(tmp_path):
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 40)
    reader = SnapshotReader(workdir)
    assert reader.read().states[steps[3]["key"]] == "done"
    (workdir / steps[3]["stage"] / f"{steps[3]['name']}-{steps[3]['key'][:8]}" / "out.txt").write_text(
        "changed!!\n"
    )
    assert reader.read(verify=True).states[steps[3]["key"]] == "failed"  # receipt kept, outputs not intact


@pytest.mark.slow
@pytest.mark.parametrize("make", ["missing", "foreign"])
def test_status_on_bad_workdir_exits_2(tmp_path, make):
    target = tmp_path / "nope"
    if make == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("not a sweep")
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc", "status", str(target)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert ("does not exist" if make == "missing" else "is not a cdhpc workdir") in out.stderr


def test_status_once_plain_table(tmp_path):
    workdir = tmp_path / "sweep"
    build_workdir(workdir, 100)
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "evaluate" in out.stdout and "failed step(s)" in out.stdout
    assert "synthetic failure" in out.stdout


@pytest.mark.slow
def test_bench_status_prints_one_json_line_comparing_ours_with_the_peer():
    """The benchmark contract users read: one JSON line on stdout, both figures from this run."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.bench",
            "status",
            "--steps",
            "300",
            "--repeats",
            "1",
            "--big-steps",
            "400",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = out.stdout.splitlines()
    result = json.loads(line)
    assert result["bench"] == "status" and result["steps"] == 300
    assert result["ratio"] == pytest.approx(result["peer"] / result["ours"])
    assert result["once_steps"] == result["cancel_steps"] == 400
    assert 0 < result["once_wall_s"] <= result["once_first_wall_s"] and 20 < result["once_peak_rss_mb"] < 2000
    assert result["cancel_plan_s"] > 0


def test_failure_line_says_why_a_step_with_a_good_receipt_failed():
    from cdhpc.ui.plain import failure_line

    assert "outputs changed" in failure_line({"status": "ok", "error": None})
    assert failure_line(None).startswith("no receipt")
    assert failure_line({"status": "failed", "error": "Traceback\nValueError: bad"}) == "ValueError: bad"


@pytest.mark.parametrize("bulk", [2000, 2])  # 2: the changed outputs' rows read in several chunks
def test_status_once_sees_outputs_changed_in_place_after_the_ingest(tmp_path, capsys, monkeypatch, bulk):
    """A done step whose output was edited (same size, new mtime and bytes), grown or removed after
    the launcher ingested its receipt is failed in `cdhpc status --once`; one only touched (new
    mtime, same bytes) is still done (re-hashed)."""
    from cdhpc.cli import main
    from cdhpc.sweep.manifest import Manifest

    monkeypatch.setattr("cdhpc.ui.status.BULK_KEYS", bulk)

    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 60)
    with Manifest(workdir) as m:  # as the launcher leaves it
        m.register_plan(steps)
        m.ingest()

    def out(i: int) -> Path:
        return workdir / steps[i]["stage"] / f"{steps[i]['name']}-{steps[i]['key'][:8]}" / "out.txt"

    text = out(3).read_text()
    out(3).write_text(text[:-2] + "X\n")  # edited in place: same size
    out(4).write_text(text + "more\n")  # grown
    out(5).unlink()  # removed
    os.utime(out(6), ns=(1, 1))  # touched only
    with SnapshotReader(workdir, specs=False) as reader:
        states = reader.read().states
    assert [states[steps[i]["key"]] for i in (2, 3, 4, 5, 6)] == [
        "done",
        "failed",
        "failed",
        "failed",
        "done",
    ]
    assert states == naive_refresh(workdir)
    capsys.readouterr()
    assert main(["status", str(workdir), "--once"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "outputs changed" in line]
    assert [[cell.strip() for cell in line.split("│")[1:3]] for line in failed] == [
        [steps[i]["stage"], steps[i]["name"]] for i in (3, 4, 5)
    ]

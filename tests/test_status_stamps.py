"""The manifest's stamps: `cdhpc status` takes the steps from the manifest while plan.json is what
it registered, ingests list only directories whose mtime changed (never missing a change made
within one timestamp tick), and a reader sees rows another process ingested. Every state is
checked against the naive reading (every file parsed again)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from cdhpc.benchmarks.status import build_workdir, naive_refresh, write_step
from cdhpc.sweep.manifest import Manifest
from cdhpc.ui.status import SnapshotReader

PAST_NS = 1_600_000_000 * 10**9  # 2020: a directory's mtime long settled


def settle(workdir: Path) -> None:
    """Every receipts/ and jobs/ directory last changed long ago (as after a finished sweep)."""
    for top in ("receipts", "jobs"):
        for d in [workdir / top, *(p for p in (workdir / top).iterdir() if p.is_dir())]:
            os.utime(d, ns=(PAST_NS, PAST_NS))


def launched(tmp_path: Path, n: int = 60) -> tuple[Path, list[dict]]:
    """A synthetic workdir whose manifest is as a launcher leaves it (plan registered, ingested)."""
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, n)
    settle(workdir)
    with Manifest(workdir) as m:
        m.register_plan(json.loads((workdir / "plan.json").read_text())["steps"])
        m.ingest()
    return workdir, steps


def light(workdir: Path) -> dict[str, str]:
    with SnapshotReader(workdir, specs=False) as reader:
        return reader.read().states


def test_status_reads_the_steps_from_the_manifest_while_plan_json_is_unchanged(tmp_path, monkeypatch):
    workdir, steps = launched(tmp_path)
    parsed = []
    monkeypatch.setattr(
        "cdhpc.ui.status.read_plan_steps", lambda *a, **k: parsed.append(1) or pytest.fail("parsed")
    )
    assert light(workdir) == naive_refresh(workdir) and not parsed
    with SnapshotReader(workdir, specs=False) as reader:
        snap = reader.read()
        assert [(s["key"], s["stage"], s["name"]) for s in snap.steps] == [
            (s["key"], s["stage"], s["name"]) for s in steps
        ]
        assert reader.specs_of([steps[5]["key"]]) == [
            steps[5]
        ]  # the full spec, for the running pretrain table


def test_a_relaunch_rewriting_the_same_plan_is_not_registered_again_a_new_plan_is(tmp_path):
    workdir, steps = launched(tmp_path)
    plan = workdir / "plan.json"
    plan.write_text(plan.read_text())  # a relaunch: the same plan, a new mtime
    with Manifest(workdir) as m:
        assert m.plan_current()
        assert (
            m.db.execute("SELECT mtime_ns FROM stamps WHERE path = 'plan.json'").fetchone()[0]
            == plan.stat().st_mtime_ns
        )
    steps[3]["resources"] = {"gpus_per_node": 4, "nodes": 2}  # another plan of the same size would do too
    extra = dict(steps[-1], key="f" * 16, name="aggregate-extra")
    plan.write_text(json.dumps({"sweep": "bench-status", "until": "aggregate", "steps": [*steps, extra]}))
    with Manifest(workdir) as m:
        assert not m.plan_current()
    with SnapshotReader(workdir, specs=False) as reader:
        snap = reader.read()
        assert (
            snap.steps[-1]["key"] == "f" * 16
            and snap.steps[3]["gpus"] == 8
            and snap.states["f" * 16] == "missing"
        )
    with Manifest(workdir) as m:
        assert m.plan_current() and m.specs_of(["f" * 16]) == [extra]


def test_register_plan_stamps_only_the_plan_json_holds(tmp_path):
    workdir, steps = launched(tmp_path)
    with Manifest(workdir) as m:
        m.register_plan(steps[:10])  # not what plan.json says: registered, not stamped
        assert not m.plan_current() and len(m.step_heads()) == 10
    assert light(workdir) == naive_refresh(workdir)  # status registers plan.json again


def test_ingest_lists_only_changed_directories_and_sees_every_change(tmp_path, monkeypatch):
    workdir, steps = launched(tmp_path)
    listed = []
    real = os.scandir
    monkeypatch.setattr("cdhpc.sweep.manifest.os.scandir", lambda p: listed.append(Path(p).name) or real(p))
    with Manifest(workdir) as m:
        assert m.ingest().keys == set() and listed == []  # nothing changed: no directory listed
        write_step(workdir, steps[18], 18, "ok", time.time())  # evaluate: a new receipt and job record
        result = m.ingest()
        assert result.keys == {steps[18]["key"]} and sorted(listed) == ["evaluate", "evaluate"]
    assert light(workdir) == naive_refresh(workdir)


def test_a_change_within_the_same_timestamp_tick_is_not_missed(tmp_path):
    """A directory changed less than RACY_NS ago is listed again next time: here a second receipt
    arrives and the directory keeps the mtime it had when the first was ingested (one tick)."""
    workdir, steps = launched(tmp_path)
    receipts = workdir / "receipts" / steps[18]["stage"]
    write_step(workdir, steps[18], 18, "ok", time.time())
    with Manifest(workdir) as m:
        m.ingest()
        tick = receipts.stat().st_mtime_ns
        write_step(workdir, steps[19], 19, "ok", time.time())
        os.utime(receipts, ns=(tick, tick))
        assert steps[19]["key"] in m.ingest().keys
    assert light(workdir) == naive_refresh(workdir)


def test_removed_stage_directories_and_files_are_forgotten(tmp_path):
    workdir, steps = launched(tmp_path)
    for p in (workdir / "receipts" / "tokenizer").iterdir():
        p.unlink()
    (workdir / "receipts" / "tokenizer").rmdir()
    (workdir / "jobs" / "prepare" / f"{steps[0]['name']}-{steps[0]['key'][:8]}.json").unlink()
    with Manifest(workdir) as m:
        assert m.ingest().keys == {steps[0]["key"], steps[1]["key"]}
    states = light(workdir)
    assert states == naive_refresh(workdir) and states[steps[1]["key"]] == "failed"  # its job record is left


def test_a_bad_file_is_reported_at_every_ingest(tmp_path):
    workdir, _ = launched(tmp_path)
    bad = workdir / "jobs" / "evaluate" / "broken.json"
    bad.write_text("{not json")
    os.utime(bad.parent, ns=(PAST_NS + 10**9, PAST_NS + 10**9))  # changed, and settled since
    with Manifest(workdir) as m:
        assert len(m.ingest().bad) == 1 and len(m.ingest().bad) == 1


@pytest.mark.parametrize("specs", [True, False])  # False: light rows, read again in full
def test_a_reader_sees_what_another_process_ingested(tmp_path, specs):
    workdir, steps = launched(tmp_path)
    with SnapshotReader(workdir, specs=specs) as reader:
        assert reader.read().states == naive_refresh(workdir)
        write_step(workdir, steps[17], 17, "ok", time.time())  # was failed
        with Manifest(
            workdir
        ) as launcher:  # the launcher ingests it first: the reader's ingest finds nothing new
            assert launcher.ingest().keys == {steps[17]["key"]}
        snap = reader.read()
        assert snap.states[steps[17]["key"]] == "done" and snap.states == naive_refresh(workdir)


def test_an_older_manifest_without_stamps_is_upgraded(tmp_path):
    workdir, _ = launched(tmp_path)
    db = sqlite3.connect(workdir / "manifest.sqlite")
    db.executescript("DROP TABLE stamps; DROP INDEX steps_heads; ALTER TABLE steps DROP COLUMN gpus;")
    db.close()
    assert light(workdir) == naive_refresh(workdir)
    with Manifest(workdir) as m:
        assert m.plan_current() and len(m.step_heads()) == 60

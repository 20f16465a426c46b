"""`cdhpc cancel`'s planning: which ids reach scancel, and that a mass cancel is linear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdhpc.ui import actions
from cdhpc.ui.actions import cancel_steps, scancel_ids
from cdhpc.ui.status import Snapshot


def test_a_whole_live_array_is_cancelled_by_its_own_id_a_part_by_its_elements():
    live = {"7": 3, "8": 3}
    assert scancel_ids({"7_0", "7_1", "7_2", "8_1", "9"}, live) == ["7", "8_1", "9"]
    assert scancel_ids({"8_0", "8_2"}, live) == ["8_0", "8_2"]


def snapshot(workdir: Path, n: int, executor: str = "slurm") -> Snapshot:
    jobs, steps, states = {}, [], {}
    for i in range(n):
        key = f"{i:016x}"
        path = Path("jobs") / "evaluate" / f"s{i}-{key[:8]}.json"
        rec = {
            "key": key,
            "executor": executor,
            "job_id": str(100 + i // 10),
            "array_index": i % 10 if executor == "slurm" else None,
            "state": "PENDING",
        }
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_text(json.dumps(rec))
        jobs[key] = dict(rec, path=str(path))
        steps.append({"key": key, "stage": "evaluate", "name": f"s{i}"})
        states[key] = "queued" if i % 10 else "running"
    return Snapshot(workdir=workdir, steps=steps, states=states, jobs=jobs)


@pytest.mark.slow
def test_cancelling_a_big_slurm_sweep_is_a_few_batched_scancel_calls(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(actions.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(actions, "SCANCEL_BATCH", 50)
    snap = snapshot(tmp_path, 2000)
    keys = [s["key"] for s in snap.steps if s["name"] != "s5"]  # array 100 loses one element: elements
    (msg,) = cancel_steps(snap, keys)
    ids = [i for cmd in calls for i in cmd[1:]]
    assert all(cmd[0] == "scancel" for cmd in calls) and len(calls) == 5, "200 ids in batches of 50 (+1)"
    assert ids[:10] == [f"100_{k}" for k in range(10) if k != 5] + ["101"] and len(ids) == 208
    assert "1999 slurm jobs (208 scancel ids) (1999 step(s))" in msg


def test_a_local_cancel_marks_the_records_of_every_step_in_the_job(tmp_path, monkeypatch):
    killed = []
    monkeypatch.setattr("cdhpc.executors.scheduler.stop_local_job", lambda pid: killed.append(pid))
    monkeypatch.setattr("cdhpc.executors.scheduler.pid_alive", lambda job_id: True)
    snap = snapshot(tmp_path, 20, executor="local")
    msgs = cancel_steps(snap, [snap.steps[0]["key"]])
    assert msgs == ["cancelled local job 100 (10 step(s))"] and killed == [100], (
        "the 10 steps packed in job 100"
    )
    states = {
        p.name: json.loads(p.read_text())["state"] for p in (tmp_path / "jobs" / "evaluate").glob("*.json")
    }
    assert sorted(states.values()) == ["CANCELLED"] * 10 + ["PENDING"] * 10

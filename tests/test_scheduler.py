"""The local executor with real (small) step functions run as submitit local jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cdhpc.executors.scheduler import DONE, FAILED, MISSING, RUNNING, classify
from cdhpc.sweep.plan import Plan, StepSpec, content_key
from cdhpc.ui.launch import execute

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(autouse=True)
def job_pythonpath(monkeypatch):
    """submitit's job processes import the test step functions."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


def step(stage: str, name: str, params: dict, **inputs: StepSpec) -> StepSpec:
    keys = {role: s.key for role, s in inputs.items()}
    return StepSpec(
        stage,
        name,
        content_key(stage, name, params, keys),
        params,
        keys,
        {"entry": "stepfns:add"},
        {"timeout_min": 5, "steps_per_job": 1},
    )


def calls(workdir: Path) -> Counter:
    log = workdir / "calls.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def value(workdir: Path, spec: StepSpec) -> int:
    return int((workdir / spec.dirname / "value.txt").read_text())


def diamond(flag: Path) -> list[StepSpec]:
    a = step("prepare", "a", {"add": 1})
    b = step("pretrain", "b", {"add": 10}, x=a)
    c = step("pretrain", "c", {"add": 1000, "fail_if_exists": str(flag)}, x=a)
    d = step("evaluate", "d", {"add": 100}, x=b)
    e = step("evaluate", "e", {"add": 5}, x=c)
    return [a, b, c, d, e]


def run(workdir: Path, steps: list[StepSpec], retries: int = 0, max_parallel: int = 2):
    return execute(workdir, Plan(steps), max_parallel=max_parallel, retries=retries, poll_s=0.1)


@pytest.mark.slow
def test_order_failure_isolation_and_rerun(tmp_path):
    flag = tmp_path / "fail-c"
    flag.touch()
    a, b, c, d, e = steps = diamond(flag)
    s = run(tmp_path, steps)
    assert set(s.done) == {a.key, b.key, d.key}
    assert s.failed == [c.key] and s.blocked == [e.key]
    assert value(tmp_path, d) == 111  # d ran after b, which ran after a
    assert calls(tmp_path) == Counter({"a": 1, "b": 1, "c": 1, "d": 1})
    receipt = json.loads((tmp_path / "receipts/pretrain" / f"c-{c.key[:8]}.json").read_text())
    assert receipt["status"] == "failed" and "failing on purpose" in receipt["error"]

    flag.unlink()  # fix the cause; re-launch runs exactly the failed step and what it blocked
    s = run(tmp_path, steps)
    assert not s.failed and not s.blocked
    assert calls(tmp_path) == Counter({"a": 1, "b": 1, "c": 2, "d": 1, "e": 1})
    assert value(tmp_path, e) == 1006

    s = run(tmp_path, steps)  # everything done: nothing runs
    assert calls(tmp_path) == Counter({"a": 1, "b": 1, "c": 2, "d": 1, "e": 1})


@pytest.mark.slow
def test_corrupted_output_is_rerun_not_trusted(tmp_path):
    a, b, c, d, e = steps = diamond(tmp_path / "no-flag")
    run(tmp_path, steps)
    (tmp_path / b.dirname / "value.txt").write_text("99")  # same size, different bytes
    run(tmp_path, steps)
    assert calls(tmp_path)["b"] == 2 and calls(tmp_path)["a"] == 1
    assert value(tmp_path, b) == 11


@pytest.mark.slow
def test_retry_budget(tmp_path):
    flag = tmp_path / "once"
    flag.touch()
    flaky = step("prepare", "flaky", {"add": 3, "fail_once_flag": str(flag)})
    s = run(tmp_path, [flaky], retries=1)
    assert s.done == [flaky.key] and calls(tmp_path)["flaky"] == 2
    flag.touch()
    flaky2 = step("prepare", "flaky2", {"add": 3, "fail_once_flag": str(flag)})
    s = run(tmp_path, [flaky2], retries=0)
    assert s.failed == [flaky2.key] and calls(tmp_path)["flaky2"] == 1


@pytest.mark.slow
def test_parallelism_limit(tmp_path):
    steps = [step("evaluate", f"p{i}", {"add": i, "sleep_s": 0.5}) for i in range(3)]
    t0 = time.time()
    run(tmp_path, steps, max_parallel=1)
    starts = sorted(
        json.loads(p.read_text())["started"] for p in (tmp_path / "receipts/evaluate").glob("*.json")
    )
    finishes = sorted(
        json.loads(p.read_text())["finished"] for p in (tmp_path / "receipts/evaluate").glob("*.json")
    )
    assert all(starts[i + 1] >= finishes[i] for i in range(2)), "max_parallel=1 ran steps at once"
    assert time.time() - t0 >= 1.5


@pytest.mark.slow
def test_resume_after_launcher_sigkill_does_no_duplicate_work(tmp_path):
    a = step("prepare", "a", {"add": 1})
    slow = step("pretrain", "slow", {"add": 2, "sleep_s": 6}, x=a)
    last = step("evaluate", "last", {"add": 4}, x=slow)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([s.to_dict() for s in (a, slow, last)]))
    work = tmp_path / "work"
    work.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, str(TESTS / "run_plan.py"), str(work), str(plan_file)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while calls(work)["slow"] == 0:  # wait until the slow step is running
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.1)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    s = run(work, [a, slow, last])  # finds the orphaned job alive, waits for it, then runs `last`
    assert sorted(s.done) == sorted([a.key, slow.key, last.key])
    assert calls(work) == Counter({"a": 1, "slow": 1, "last": 1})
    assert value(work, last) == 7


def _gpus_probe(tasks: int) -> StepSpec:
    return StepSpec(
        "evaluate",
        "gpus",
        content_key("evaluate", "gpus", {"tasks": tasks}, {}),
        {"tasks": tasks},
        {},
        {"entry": "stepfns:gpus_seen"},
        {"timeout_min": 5, "steps_per_job": 1, "gpus_per_node": 0, "tasks_per_node": tasks},
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [None, "", "3,1"])
def test_a_local_job_asking_for_no_gpu_sees_what_the_launcher_sees(tmp_path, monkeypatch, launcher):
    """submitit's local executor sets CUDA_VISIBLE_DEVICES="" for a job asking for no GPU; ours
    sees the launcher's view: every GPU (unset), none (""), or the launcher's list. A two-task job
    asking for none keeps "" (CPU ranks)."""
    from cdhpc.base.devices import LAUNCHER_GPUS

    monkeypatch.setenv(LAUNCHER_GPUS, "null")  # the launcher sets it in this process: undone at teardown
    if launcher is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", launcher)
    one, two = _gpus_probe(1), _gpus_probe(2)
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    assert run(tmp_path / "one", [one]).done == [one.key]
    assert json.loads((tmp_path / "one" / "gpus.0.json").read_text()) == launcher
    if launcher is None:
        assert run(tmp_path / "two", [two]).done == [two.key]
        seen = [json.loads((tmp_path / "two" / f"gpus.{r}.json").read_text()) for r in range(2)]
        assert seen == ["", ""]


def test_classify_is_pure_and_receipt_is_the_proof():
    ok, failed = {"status": "ok"}, {"status": "failed"}
    job = {"state": "RUNNING"}
    assert classify(ok, [], None, False) == DONE
    assert classify(ok, None, None, False) == FAILED  # outputs no longer match the receipt
    assert classify(None, None, job, True) == RUNNING
    assert classify(None, None, job, False) == FAILED  # left the queue without a receipt
    assert classify(failed, None, None, False) == FAILED
    assert classify(None, None, None, False) == MISSING


@pytest.mark.slow
def test_cdhpc_cancel_stops_a_running_step_and_it_is_not_retried(tmp_path):
    slow = step("pretrain", "slow", {"add": 1, "sleep_s": 60})
    work = tmp_path / "work"
    work.mkdir()
    (work / "cdhpc.json").write_text(json.dumps({"sweep": "t"}))
    (work / "plan.json").write_text(json.dumps({"steps": [slow.to_dict()]}))
    plan_file = tmp_path / "steps.json"
    plan_file.write_text(json.dumps([slow.to_dict()]))
    launcher = subprocess.Popen(
        [sys.executable, str(TESTS / "run_plan.py"), str(work), str(plan_file), "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while calls(work)["slow"] == 0:
            assert time.time() < deadline and launcher.poll() is None
            time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-m", "cdhpc", "cancel", str(work), "--stage", "pretrain"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "cancelled local job" in out.stdout, out.stderr
        assert launcher.wait(timeout=60) == 1  # the step failed (cancelled), and was not resubmitted
    finally:
        launcher.kill()
    assert calls(work)["slow"] == 1
    record = json.loads(next((work / "jobs" / "pretrain").glob("*.json")).read_text())
    assert record["state"] == "CANCELLED"

"""SIGTERM/SIGINT stop a local step (submitit's local jobs would bypass SIGTERM): it records itself
cancelled (receipt and job record), is not retried, and the next launch resumes it. SIGTERM to the
launcher cancels the local jobs it runs. SLURM keeps submitit's own signal handling. The fast tests
use a fake resumable stage run as real submitit local jobs; the `slow` ones real generate and
pretrain steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cdhpc.base.atomicio import atomic_write_text
from cdhpc.base.jobsignals import StepCancelled, stop_on_signals
from cdhpc.sweep.jobrecords import JobRecord, job_record_path
from cdhpc.sweep.plan import Plan, StepSpec, content_key
from cdhpc.sweep.receipts import read_receipt, receipt_path
from cdhpc.ui.launch import execute
from jobs import StepContext, StepResult, run_step

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def count_squares(ctx: StepContext) -> StepResult:
    """A fake resumable stage: parts/<i>.txt holds i*i, one part every options.sleep_s, flushed
    parts skipped; total.txt is their sum. Each part written is logged in workdir/calls.log."""
    parts = ctx.out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for i in range(ctx.params["n"]):
        part = parts / f"{i:03d}.txt"
        if part.exists():
            continue
        time.sleep(ctx.spec.options.get("sleep_s", 0))
        atomic_write_text(part, str(i * i))
        with open(ctx.workdir / "calls.log", "a") as f:
            f.write(f"{i}\n")
    total = sum(int(p.read_text()) for p in parts.iterdir())
    atomic_write_text(ctx.out_dir / "total.txt", str(total))
    return StepResult(outputs=[ctx.out_dir / "total.txt"], metrics={"total": total})


def resumable(ctx: StepContext) -> list[Path]:
    """The parts that hold what their index says (this fake stage's verification)."""
    parts = ctx.out_dir / "parts"
    return (
        [p for p in parts.glob("*.txt") if p.read_text() == str(int(p.stem) ** 2)] if parts.is_dir() else []
    )


def squares_step(n: int, sleep_s: float) -> StepSpec:
    params = {"n": n}
    return StepSpec(
        "generate",
        "squares",
        content_key("generate", "squares", params, {}),
        params,
        {},
        {"entry": "test_signals:count_squares", "sleep_s": sleep_s},
        {"timeout_min": 5},
    )


def with_options(spec: StepSpec, **options) -> StepSpec:
    """The same step (options are not in its key) run another way."""
    return StepSpec.from_dict(spec.to_dict() | {"options": spec.options | options})


def parts_written(workdir: Path) -> list[int]:
    log = workdir / "calls.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def wait_until(predicate, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def job_processes(workdir: Path, spec: StepSpec) -> tuple[psutil.Process, list[psutil.Process]]:
    """The submitit controller of the step's local job and its task processes."""
    controller = psutil.Process(int(json.loads(job_record_path(workdir, spec).read_text())["job_id"]))
    return controller, controller.children()


def records(workdir: Path, spec: StepSpec) -> tuple[str, str]:
    receipt = read_receipt(receipt_path(workdir, spec.stage, spec.name, spec.key))
    return receipt.status, json.loads(job_record_path(workdir, spec).read_text())["state"]


@pytest.fixture(autouse=True)
def job_pythonpath(monkeypatch):
    """submitit's job processes import this module's fake stage."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_sigterm_and_sigint_cancel_the_step_but_not_on_slurm(monkeypatch, restore_signals):
    def requeue(signum, frame):  # stands for submitit's USR2 checkpoint-and-requeue handler
        pass

    signal.signal(signal.SIGUSR2, requeue)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert stop_on_signals() == [signal.SIGINT, signal.SIGTERM]
    assert signal.getsignal(signal.SIGUSR2) is requeue
    for signum in (signal.SIGTERM, signal.SIGINT):
        with pytest.raises(StepCancelled, match=signal.Signals(signum).name):
            os.kill(os.getpid(), signum)
            time.sleep(5)

    def bypass(signum, frame):  # what submitit's job environment installs for SIGTERM
        pass

    signal.signal(signal.SIGTERM, bypass)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # SIGTERM then USR2 is a preemption there
    assert stop_on_signals() == [signal.SIGINT] and signal.getsignal(signal.SIGTERM) is bypass
    assert signal.getsignal(signal.SIGUSR2) is requeue


def cancelled_by_signal(ctx: StepContext) -> StepResult:
    raise StepCancelled("cancelled by SIGTERM")


def test_a_cancelled_step_says_so_in_its_receipt_and_job_record(tmp_path, monkeypatch):
    spec = StepSpec("generate", "c", "c" * 16, {}, {}, {"entry": "test_signals:cancelled_by_signal"}, {})
    record = job_record_path(tmp_path, spec)
    record.parent.mkdir(parents=True)
    JobRecord(spec.key, "local", "777", "RUNNING", 1, 0.0, 0.0).write(record)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "777")
    with pytest.raises(StepCancelled):
        run_step(tmp_path, spec)
    assert records(tmp_path, spec) == ("cancelled", "CANCELLED")
    assert "cancelled by SIGTERM" in read_receipt(receipt_path(tmp_path, "generate", "c", spec.key)).error


@pytest.mark.slow
def test_sigterm_stops_a_local_step_and_the_next_launch_resumes_it(tmp_path):
    spec = squares_step(n=30, sleep_s=0.15)
    killed = {}

    def kill_the_step_when_two_parts_are_written():
        wait_until(lambda: len(parts_written(tmp_path)) >= 2)
        controller, (task,) = job_processes(tmp_path, spec)
        task.send_signal(signal.SIGTERM)
        killed.update(at=time.time(), task=task)

    killer = threading.Thread(target=kill_the_step_when_two_parts_are_written)
    killer.start()
    summary = execute(tmp_path, Plan([spec]), max_parallel=1, retries=2, poll_s=0.05)
    killer.join()
    killed["task"].wait(timeout=5)
    assert time.time() - killed["at"] < 3, "the step did not stop within a few seconds"
    assert summary.failed == [spec.key]  # cancelled, and not retried although retries=2
    assert records(tmp_path, spec) == ("cancelled", "CANCELLED")
    before = parts_written(tmp_path)
    assert 2 <= len(before) < 30

    summary = execute(tmp_path, Plan([with_options(spec, sleep_s=0)]), max_parallel=1, retries=0, poll_s=0.05)
    assert summary.done == [spec.key] and records(tmp_path, spec) == ("ok", "COMPLETED")
    assert sorted(parts_written(tmp_path)) == list(range(30))  # resumed: no part written twice
    assert (tmp_path / spec.dirname / "total.txt").read_text() == str(sum(i * i for i in range(30)))


@pytest.mark.slow  # not training, but ~5 s of launcher and job processes
def test_sigterm_to_the_launcher_cancels_its_local_jobs_and_leaves_them_resumable(tmp_path):
    spec = squares_step(n=30, sleep_s=0.15)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([spec.to_dict()]))
    work = tmp_path / "work"
    work.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, str(TESTS / "run_plan.py"), str(work), str(plan_file), "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: len(parts_written(work)) >= 2)
        controller, tasks = job_processes(work, spec)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=15)
        assert not controller.is_running() and not any(t.is_running() for t in tasks)
    finally:
        launcher.kill()
    assert records(work, spec) == ("cancelled", "CANCELLED")
    before = parts_written(work)
    summary = execute(work, Plan([with_options(spec, sleep_s=0)]), max_parallel=1, retries=0, poll_s=0.05)
    assert summary.done == [spec.key]
    assert sorted(parts_written(work)) == list(range(30)) and len(before) < 30


@pytest.mark.slow
def test_sigterm_mid_pretrain_and_mid_shard_then_a_relaunch_gives_identical_outputs(
    tmp_path, small_sweep_reference
):
    """Real steps: SIGTERM to the pretrain step after its first DeepSpeed checkpoint, then (on the
    relaunch, which resumes it) to the generate step after two flushed chunks. Each stops within
    seconds as cancelled; the last relaunch ends with the bytes of an uninterrupted sweep."""
    from smallsweep import digests, launch, run_to_end, wait_for, write_sweep_from

    killed = write_sweep_from(small_sweep_reference, tmp_path, "killed")
    work = tmp_path / "killed"
    for stage, started, finished in (
        ("pretrain", "pretrain/baseline-s1-*/ds/progress.json", "pretrain/baseline-s1-*/checkpoints/step_80"),
        ("generate", "generate/cd-0000-*/shard.parts/part-00001.parquet", "generate/cd-0000-*/shard.parquet"),
    ):
        launcher = launch(killed, "generate")
        wait_for(lambda started=started: any(work.glob(started)), launcher)
        (record,) = (work / "jobs" / stage).glob("*.json")
        (task,) = psutil.Process(int(json.loads(record.read_text())["job_id"])).children()
        task.send_signal(signal.SIGTERM)
        sent = time.time()
        task.wait(timeout=30)
        assert time.time() - sent < 5, f"{stage} did not stop within 5 s of SIGTERM"
        out, _ = launcher.communicate(timeout=120)
        assert launcher.returncode == 1 and "cancelled" in out  # not retried; its dependents wait
        (receipt,) = (work / "receipts" / stage).glob("*.json")
        assert (
            read_receipt(receipt).status == "cancelled"
            and json.loads(record.read_text())["state"] == "CANCELLED"
        )
        assert not any(work.glob(finished)), "the step finished before SIGTERM: nothing was tested"
    run_to_end(killed, "generate")

    logs = "".join(p.read_text() for p in (work / "logs" / "pretrain").glob("*_log.out"))
    assert any(f"start_step={n}" in logs for n in (20, 40, 60))  # resumed from its DeepSpeed checkpoint
    reference = next(small_sweep_reference.glob("pretrain/baseline-s1-*"))
    assert digests(next(work.glob("pretrain/baseline-s1-*")) / "checkpoints") == digests(
        reference / "checkpoints"
    )
    (receipt,) = (work / "receipts" / "generate").glob("cd-0000-*.json")
    assert 0 < read_receipt(receipt).metrics["chunks_generated"] < read_receipt(receipt).metrics["chunks"]
    assert (
        next(work.glob("generate/cd-0000-*/shard.parquet")).read_bytes()
        == next(small_sweep_reference.glob("generate/cd-0000-*/shard.parquet")).read_bytes()
    )


@pytest.mark.slow  # not training, but ~3 s of job processes
def test_usr2_still_checkpoints_requeues_and_resumes(tmp_path):
    """submitit's preemption/time-limit path (USR2 -> checkpoint() -> requeue) is untouched by
    the SIGTERM/SIGINT handling: the requeued job resumes from the flushed parts and finishes ok."""
    import submitit

    from jobs import StepJob

    spec = squares_step(n=12, sleep_s=0.4)  # seconds of work left after the 2nd part: USR2 lands mid-step
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(StepJob(str(tmp_path), [spec.to_dict()]))
    wait_until(lambda: len(parts_written(tmp_path)) >= 2)
    (task,) = psutil.Process(int(job.job_id)).children()
    task.send_signal(signal.SIGUSR2)  # as SLURM, or the local controller near the time limit, does
    assert job.result() == [spec.key]
    assert "Requeued job" in job.stdout() and "resuming from" in job.stdout()
    assert sorted(parts_written(tmp_path)) == list(range(12))  # resumed after the requeue, nothing twice
    assert read_receipt(receipt_path(tmp_path, spec.stage, spec.name, spec.key)).status == "ok"

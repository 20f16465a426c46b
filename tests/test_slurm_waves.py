"""Waves against the real one-node cluster of slurm/dev-cluster/ (marker: slurm): with
MaxSubmitJobsPerUser=20 on the sweep's QOS (a QOS `waves20` that this module adds with sacctmgr,
gives the user and removes after: other sweeps on the cluster, without that QOS, are untouched),
a sweep of 91 one-job steps (tests/stepfns.py:add) runs to its end in waves: the launcher exits
after the first wave, no more than 20 jobs are ever queued, each wave's continuation job submits
the next, the values prove every edge across waves, and a relaunch in the middle submits nothing
twice. The same, 37 jobs, with --follow, interrupted once with SIGINT (nothing is cancelled).

The dev cluster enforces the QOS (AccountingStorageEnforce=associations,limits,qos): a wave above
the limit would be refused by sbatch, and the squeue watcher also checks that cdhpc never went
above it. When another submission of the same user fills the QOS after the launcher read the
limits, SLURM's refusal stops the launch at once with one line (the last test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cdhpc.sweep.plan import StepSpec, content_key
from cdhpc.ui.status import SnapshotReader
from waits import wait_until

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sacctmgr") is None, reason="SLURM not installed; run slurm/dev-cluster/start.sh"
    ),
]
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LIMIT = 20
WIDTH = 30  # 30 prepare + 30 pretrain + 30 evaluate + 1 aggregate = 91 jobs: five waves or more
FOLLOW_WIDTH = 12  # --follow: 37 jobs, still above the limit (it tops the queue up at least once)
QOS = "waves20"
PROFILE = {
    "partition": "debug",
    "qos": QOS,
    "signal_delay_s": 30,
    "max_requeues": 0,
    "submit_interval_s": 0.0,
}
USER = "root" if os.geteuid() == 0 else os.environ.get("USER", "")


def sacctmgr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def submit_limit():
    """A QOS with MaxSubmitJobsPerUser=20 that the user may use, for this module; removed after."""
    if subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "qos", "format=Name"], capture_output=True, text=True, timeout=30
    ).returncode:
        pytest.skip("no accounting to set a limit in (slurmdbd down or accounting off)")
    sacctmgr("delete", "qos", QOS)  # a leftover of an interrupted run
    for args in (
        ("add", "qos", QOS, f"MaxSubmitJobsPerUser={LIMIT}"),
        ("modify", "user", "where", f"name={USER}", "set", f"qos+={QOS}"),
    ):
        done = sacctmgr(*args)
        assert done.returncode == 0, f"sacctmgr {' '.join(args)}: {done.stderr}"
    try:
        yield LIMIT
    finally:
        sacctmgr("modify", "user", "where", f"name={USER}", "set", f"qos-={QOS}")
        sacctmgr("delete", "qos", QOS)


@pytest.fixture(autouse=True)
def job_pythonpath(monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


def step(name: str, add: int, stage: str, gate: str | None = None, **inputs: StepSpec) -> StepSpec:
    keys = {role: s.key for role, s in inputs.items()}
    res = {
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 0.25,
        "timeout_min": 5,
        "steps_per_job": 1,
    }
    params = {"add": add} | ({"wait_for": gate} if gate else {})
    return StepSpec(
        stage, name, content_key(stage, name, params, keys), params, keys, {"entry": "stepfns:add"}, res
    )


def paper_shaped(width: int = WIDTH, gate: str | None = None) -> tuple[list[StepSpec], dict[str, int]]:
    """Three layers with crossing edges and a fan-in, and each step's expected value. `gate`: the
    fan-in step waits for this file (the sweep cannot finish before the test says so)."""
    prep = [step(f"p{i}", i, "prepare") for i in range(width)]
    train = [step(f"t{i}", 1000, "pretrain", x=prep[i]) for i in range(width)]
    ev = [step(f"e{i}", 10**6, "evaluate", x=train[i], y=train[(i + 1) % width]) for i in range(width)]
    agg = step("all", 0, "aggregate", gate, **{f"e{i}": e for i, e in enumerate(ev)})
    value = {f"p{i}": i for i in range(width)} | {f"t{i}": 1000 + i for i in range(width)}
    value |= {f"e{i}": 10**6 + value[f"t{i}"] + value[f"t{(i + 1) % width}"] for i in range(width)}
    value["all"] = sum(value[f"e{i}"] for i in range(width))
    return [*prep, *train, *ev, agg], value


def prepare(workdir: Path, steps: list[StepSpec]) -> None:
    workdir.mkdir(parents=True)
    (workdir / "plan.json").write_text(json.dumps({"steps": [s.to_dict() for s in steps]}))
    (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "waves"}))
    (workdir / "profile.json").write_text(json.dumps(PROFILE))


def harness(workdir: Path, *flags: str) -> list[str]:
    return [sys.executable, str(TESTS / "waves_plan.py"), str(workdir), *flags]


class QueueWatch:
    """Counts the user's pending and running jobs in the QOS (array elements one each) every second."""

    def __init__(self):
        self.counts: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run(
                [
                    "squeue",
                    "-h",
                    "-r",
                    "-u",
                    USER,
                    "-q",
                    QOS,
                    "-t",
                    "PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED",
                    "-o",
                    "%i",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if out.returncode == 0:
                self.counts.append(len(out.stdout.split()))
            self.stop.wait(1.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def states(workdir: Path) -> dict[str, str]:
    with SnapshotReader(workdir) as reader:
        snap = reader.read()
    return {s["name"]: snap.states[s["key"]] for s in snap.steps}


def finished(workdir: Path) -> bool:
    return set(states(workdir).values()) == {"done"}


def check_results(workdir: Path, steps: list[StepSpec], value: dict[str, int]) -> None:
    got = {s.name: int((workdir / s.dirname / "value.txt").read_text()) for s in steps}
    assert got == value, "a value proves the inputs a step read: every edge, across waves too"
    calls = (workdir / "calls.log").read_text().split()
    assert sorted(calls) == sorted(value), "every step ran exactly once: nothing was submitted twice"


def wave(workdir: Path) -> dict:
    return json.loads((workdir / "waves.json").read_text())


def test_a_sweep_above_the_submit_limit_runs_in_waves_unattended(submit_limit, tmp_path):
    steps, value = paper_shaped()
    workdir = tmp_path / "w"
    prepare(workdir, steps)
    with QueueWatch() as watch:
        t0 = time.monotonic()
        first = subprocess.run(harness(workdir), capture_output=True, text=True, timeout=300)
        launch_s = time.monotonic() - t0
        assert first.returncode == 0, first.stderr[-3000:]
        assert "left for the next wave" in first.stderr and wave(workdir)["wave"] == 1
        assert f"MaxSubmitJobs {LIMIT} (QOS {QOS})" in first.stderr, "the limit is read from the QOS"
        queued_after_first = watch.counts[-1] if watch.counts else None
        wait_until("the second wave", lambda: wave(workdir)["wave"] >= 2, 900, 2)
        for _ in range(
            30
        ):  # a relaunch mid-sweep, by the user (exit 2 while a continuation holds the workdir)
            again = subprocess.run(harness(workdir), capture_output=True, text=True, timeout=300)
            if again.returncode != 2:
                break
            time.sleep(2)
        assert again.returncode == 0, again.stderr[-3000:]
        wait_until("the sweep to finish in waves", lambda: finished(workdir), 1800, 5)
    assert launch_s < 60, "the launcher returns after the first wave"
    assert max(watch.counts) <= LIMIT, f"at most {LIMIT} jobs queued at any poll: {max(watch.counts)}"
    history = wave(workdir)["history"]
    by_continuation = [h for h in history if h["by"]]
    assert len({h["wave"] for h in history}) >= 4 and len(by_continuation) >= 3, history
    assert history[-1]["continuation"] is None, "the last wave leaves no continuation"
    check_results(workdir, steps, value)
    status = subprocess.run(
        [sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "wave " in status.stdout, status.stdout
    print(
        f"waves: launch {launch_s:.1f} s, {queued_after_first} queued after it, max queued "
        f"{max(watch.counts)}, "
        f"{len(history)} launches: {[(h['wave'], h['jobs']) for h in history]}"
    )


def test_follow_tops_up_the_queue_and_ctrl_c_cancels_nothing(submit_limit, tmp_path):
    gate = tmp_path / "gate"  # the aggregate step waits for it: Ctrl-C comes while jobs are left
    steps, value = paper_shaped(FOLLOW_WIDTH, str(gate))
    workdir = tmp_path / "w"
    prepare(workdir, steps)
    with QueueWatch() as watch:
        follow = subprocess.Popen(
            harness(workdir, "--follow"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_until("some steps done", lambda: sum(v == "done" for v in states(workdir).values()) >= 8, 900, 2)
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=120)
        assert follow.returncode == 130 and "nothing was cancelled" in err, err[-3000:]
        left = states(workdir)
        assert "queued" in left.values() or "running" in left.values(), "Ctrl-C left the submitted jobs alone"
        assert "failed" not in left.values()
        gate.touch()
        again = subprocess.run(harness(workdir, "--follow"), capture_output=True, text=True, timeout=1800)
        assert again.returncode == 0, again.stderr[-3000:]
    assert finished(workdir), "--follow returns when the sweep is done"
    assert max(watch.counts) <= LIMIT, f"at most {LIMIT} jobs queued at any poll: {max(watch.counts)}"
    assert not (workdir / "logs" / "continue").exists(), "--follow submits no continuation job"
    check_results(workdir, steps, value)


def test_a_limit_that_slurm_enforces_stops_the_launch_at_once_with_whole_arrays_only(submit_limit, tmp_path):
    """Another submission of the same user fills the QOS between the launcher's read of the limits
    and its second sbatch (a fake sbatch on PATH submits 49 held jobs to the QOS, then calls the
    real one). SLURM enforces the QOS (AccountingStorageEnforce=limits,qos) and refuses the next
    array: the launcher stops at once (no retries, no wait) with one line that names the limit,
    and what it submitted before stands as whole arrays: the one prepare job."""
    import yaml

    prof = yaml.safe_load((ROOT / "slurm" / "dev.yaml").read_text()) | {"qos": QOS}
    (tmp_path / "prof.yaml").write_text(yaml.safe_dump(prof))
    real, filler, fake = shutil.which("sbatch"), tmp_path / "filler", tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        f'#!/bin/sh\nif [ -e {filler} ]; then exec {real} "$@"; fi\n{real} "$@" || exit $?\n'
        f"{real} --parsable --hold -p debug -q {QOS} --array=0-{LIMIT - 2} -J cdhpc-test-filler --wrap true "
        f"> {filler}\n"
    )
    (fake / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    workdir = tmp_path / "w"
    try:
        t0 = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cdhpc.launch",
                "configs/tiny.yaml",
                f"workdir={workdir}",
                "executor=slurm",
                f"executor.profile={tmp_path / 'prof.yaml'}",
                "--until",
                "generate",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - t0
        assert filler.is_file(), out.stderr[-3000:]
        assert out.returncode == 1, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert "refused" in last and "MaxSubmitJobs" in last and "QOSMaxSubmitJobPerUserLimit" in last, last
        assert took < 60, f"no retries against a limit: {took:.0f} s"
        print(f"refused after {took:.1f} s: {last}")
        ours = subprocess.run(
            ["squeue", "-h", "-r", "-u", USER, "-q", QOS, "-o", "%j"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        assert len([n for n in ours if n != "cdhpc-test-filler"]) == 1 and any(
            "prepare" in n for n in ours
        ), ours
    finally:
        if filler.is_file():
            subprocess.run(["scancel", filler.read_text().strip()], timeout=30)
        subprocess.run(
            [sys.executable, "-m", "cdhpc", "cancel", str(workdir)],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )

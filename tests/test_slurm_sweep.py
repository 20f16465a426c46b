"""The SLURM executor against the real one-node cluster of slurm/dev-cluster/ (marker: slurm):
the tiny sweep through sbatch arrays and afterok edges, equal to the local executor's results;
scancel, time limits, requeue and resume; relaunch after a failure; a launcher killed
mid-submit; status without accounting. Every wait is bounded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cdhpc.config.profile import ClusterProfile
from cdhpc.executors.launch_slurm import submit_plan
from cdhpc.executors.scheduler import LIVE_JOB_STATES
from cdhpc.sweep.manifest import Manifest
from cdhpc.sweep.plan import Plan, StepSpec, content_key
from cdhpc.ui.status import SnapshotReader
from donesteps import copy_done_steps
from waits import wait_until

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sinfo") is None, reason="SLURM not installed; run slurm/dev-cluster/start.sh"
    ),
]
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DEV = ["executor=slurm", "executor.profile=dev"]
# The SLURM sweep is the tiny sweep up to generate with two of its generating methods: cd-small
# (expert and amateur are two trained models, in lockstep) and cd-drop-0.5 (a seeded dropout
# amateur), as tiny.yaml writes them, so its 11 steps keep their keys (other methods and
# resources are not part of a key) and each one's outputs are compared with the local run's. It
# starts from a copy of the local sweep's outputs up to pretrain (tiny_local_pretrained: trained
# once per session; pretraining on SLURM is tested below, requeued, and on two nodes in
# test_slurm_multinode.py) and runs its 6 select and generate steps, generate two to a job.
TINY_METHODS = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["methods"]
SMALL = (
    "--until",
    "generate",
    "executor.resources.generate.steps_per_job=2",
    "methods=" + json.dumps({m: TINY_METHODS[m] for m in ("baseline", "cd-small", "cd-drop-0.5")}),
)
N_SMALL, N_RUN = 11, 6


def copy_upstream(local: Path, workdir: Path, until: str = "pretrain") -> int:
    """The local tiny sweep's steps up to `until`, done in `workdir`; how many."""
    return copy_done_steps(local, workdir, ROOT / "configs" / "tiny.yaml", until)


@pytest.fixture(autouse=True)
def job_pythonpath(monkeypatch):
    """Jobs inherit the environment (sbatch --export=ALL) and import the test step functions."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


def launch(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}", *DEV, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(what: str, check: Callable[[], object], timeout_s: float, poll_s: float = 2.0) -> object:
    return wait_until(what, check, timeout_s, poll_s)


def states(workdir: Path) -> dict[str, str]:
    snap = SnapshotReader(workdir).read()
    return {f"{s['stage']}/{s['name']}": snap.states[s["key"]] for s in snap.steps}


def job_records(workdir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (workdir / "jobs").glob("*/*.json")}


def settled(workdir: Path) -> dict[str, str] | None:
    """The states once nothing is queued or running any more."""
    now = states(workdir)
    return None if any(s in ("queued", "running") for s in now.values()) else now


# ----------------------------------------------------------------------------- the tiny sweep
@pytest.fixture(scope="module")
def slurm_sweep(tmp_path_factory, cluster_up, tiny_local_pretrained):
    """The tiny sweep up to generate (SMALL) submitted to SLURM from the local sweep's pretrained
    models, relaunched once while it runs, followed with `cdhpc status --once` to the end."""
    workdir = tmp_path_factory.mktemp("tiny-slurm") / "work"
    assert copy_upstream(tiny_local_pretrained, workdir) == N_SMALL - N_RUN
    t0 = time.monotonic()
    first = launch(workdir, *SMALL)
    launch_s = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    right_after = states(workdir)
    ids_before = {r["job_id"] for r in job_records(workdir).values()}
    again = launch(workdir, *SMALL)
    assert again.returncode == 0, again.stderr[-3000:]
    ids_after = {r["job_id"] for r in job_records(workdir).values()}
    polls = []

    def finished() -> bool:
        out = subprocess.run(
            [sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        polls.append(out)
        # a step's receipt is written before its job exits: wait for the job records too,
        # which `status --once` refreshes from sacct/squeue
        ran = [s for s in states(workdir).values() if s != "missing"]  # SMALL: the rest is not planned
        return (
            out.returncode == 0
            and len(ran) == N_SMALL
            and all(s == "done" for s in ran)
            and all(r["state"] not in LIVE_JOB_STATES for r in job_records(workdir).values())
        )

    wait_for("the tiny sweep to finish on SLURM", finished, timeout_s=1800, poll_s=10)
    return {
        "workdir": workdir,
        "first": first,
        "again": again,
        "launch_s": launch_s,
        "right_after": right_after,
        "ids_before": ids_before,
        "ids_after": ids_after,
        "polls": polls,
    }


@pytest.fixture(scope="module")
def cluster_up():
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10)
    if out.returncode or out.stdout.split()[0] not in ("idle", "mixed", "allocated", "completing"):
        pytest.fail(
            f"the dev cluster is not up ({out.stdout.strip()} {out.stderr.strip()}); run "
            "slurm/dev-cluster/start.sh"
        )


def test_launcher_submits_everything_and_exits_and_a_relaunch_submits_nothing(slurm_sweep):
    s = slurm_sweep
    # select: both steps in one job (tiny.yaml packs select steps; their models are trained: no
    # dependency); generate: 4 steps, two to a job, one array of 2 after it
    assert f"{N_RUN} submitted in 3 job(s), 2 array(s)" in s["first"].stderr, s["first"].stderr[-3000:]
    assert s["launch_s"] < 60, "the launcher returns after submission"
    assert sum(v in ("queued", "running") for v in s["right_after"].values()) >= 4, (
        "it did not wait for the jobs"
    )
    assert "0 submitted in 0 job(s)" in s["again"].stderr and s["ids_after"] == s["ids_before"]
    recs = job_records(s["workdir"])
    assert all(r["executor"] == "slurm" and r["job_name"].startswith("cdhpc.tiny.") for r in recs.values())
    assert {r["state"] for r in recs.values()} == {"COMPLETED"}
    assert any(r["array_index"] is not None for r in recs.values()), "stages run as job arrays"


MEASURED = {"tokens_per_s", "matmul_utilisation", "mfu", "time"}  # a metrics.jsonl line's timings


def as_result(workdir: Path, rel: str) -> object:
    """An output file as far as it is a result: metrics.jsonl without its timings, any other file
    with the workdir's own path replaced (a token array's meta.json names its input files)."""
    data = (workdir / rel).read_bytes()
    if rel.endswith("/metrics.jsonl"):
        return [
            {k: v for k, v in json.loads(line).items() if k not in MEASURED} for line in data.splitlines()
        ]
    return data.replace(str(workdir).encode(), b"<workdir>")


def test_status_follows_to_the_end_and_every_steps_outputs_equal_the_local_executors(
    slurm_sweep, tiny_local, tiny_local_receipts
):
    polls = slurm_sweep["polls"]
    assert polls[-1].returncode == 0 and "generate" in polls[-1].stdout
    ours, local = slurm_sweep["workdir"], tiny_local[0]
    receipts = sorted((ours / "receipts").glob("*/*.json"))
    assert len(receipts) == N_SMALL
    for path in receipts:  # the local receipts as the sweep left them: other tests rerun steps of it
        theirs_path = tiny_local_receipts / path.relative_to(ours / "receipts")
        mine, theirs = (json.loads(p.read_text())["outputs"] for p in (path, theirs_path))
        assert [o["path"] for o in mine] == [o["path"] for o in theirs], path.name
        for a, b in zip(mine, theirs):
            if a["sha256"] != b["sha256"]:
                assert as_result(ours, a["path"]) == as_result(local, b["path"]), a["path"]
    again = launch(ours, *SMALL)
    assert again.returncode == 0 and "0 submitted" in again.stderr, again.stderr[-3000:]


def sha256_tree(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_time_limited_pretrain_step_is_requeued_and_resumes_from_its_checkpoint(
    tiny_local_pretrained, tmp_path
):
    """USR2 as at a time limit (submitit's _interrupt(timeout=True)) once the first DeepSpeed
    checkpoint exists (tiny.yaml's checkpoint_every: 30): submitit checkpoints and requeues the job,
    the step resumes from a saved step (30 unless the signal landed later) and ends with the same
    weights as the uninterrupted run of the local executor (the same step key: the other methods
    are left out, and with them the amateur model, which no key of baseline-s1 depends on)."""
    import submitit

    workdir = tmp_path / "work"
    assert copy_upstream(tiny_local_pretrained, workdir, "tokenizer") == 2  # prepare, tokenizer
    out = launch(workdir, "--until", "pretrain", "pretrain.seeds=[1]", "methods={baseline: {}}")
    assert out.returncode == 0, out.stderr[-3000:]
    rec_path = next((workdir / "jobs" / "pretrain").glob("baseline-s1-*.json"))
    out_dir = workdir / "pretrain" / rec_path.stem
    wait_for("the first DeepSpeed checkpoint", lambda: (out_dir / "ds" / "progress.json").is_file(), 600, 0.5)
    rec = json.loads(rec_path.read_text())
    ref = rec["job_id"] if rec["array_index"] is None else f"{rec['job_id']}_{rec['array_index']}"
    submitit.SlurmJob(folder=workdir / "logs" / "pretrain", job_id=ref)._interrupt(timeout=True)
    wait_for("the pretrain steps to finish", lambda: settled(workdir), 900)
    ran = {k: v for k, v in states(workdir).items() if v != "missing"}  # --until pretrain: no retrained runs
    assert set(ran.values()) == {"done"} and len(ran) == 3, ran  # prepare, tokenizer, baseline-s1
    log = Path(rec["stdout"]).read_text()
    resumed = [int(n) for n in re.findall(r"start_step=(\d+)", log)]
    assert "Requeued job" in log and resumed[-1] in (30, 60, 90), log[-3000:]
    uninterrupted = tiny_local_pretrained / "pretrain" / rec_path.stem
    assert sha256_tree(out_dir / "checkpoints") == sha256_tree(uninterrupted / "checkpoints")


# ----------------------------------------------------------------------------- drills
def step(
    name: str, params: dict, timeout_min: int = 5, stage: str = "evaluate", **inputs: StepSpec
) -> StepSpec:
    keys = {role: s.key for role, s in inputs.items()}
    res = {
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 0.25,
        "timeout_min": timeout_min,
        "steps_per_job": 1,
    }
    return StepSpec(
        stage, name, content_key(stage, name, params, keys), params, keys, {"entry": "stepfns:add"}, res
    )


PROFILE = ClusterProfile(partition="debug", signal_delay_s=30, max_requeues=0, submit_interval_s=0.0)


def submit(workdir: Path, steps: list[StepSpec], profile: ClusterProfile = PROFILE):
    plan = Plan(steps)
    if not (workdir / "plan.json").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "plan.json").write_text(json.dumps({"steps": [s.to_dict() for s in steps]}))
        (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "drill"}))
    return submit_plan(workdir, plan, profile, "drill")


def test_after_a_failure_a_relaunch_submits_only_the_failed_step_and_its_dependents(cluster_up, tmp_path):
    flag = tmp_path / "fail-b"
    flag.touch()
    a = step("a", {"add": 1})
    b = step("b", {"add": 10, "fail_if_exists": str(flag)}, x=a)
    c = step("c", {"add": 100}, x=b)
    d = step("d", {"add": 1000}, x=a)
    workdir = tmp_path / "w"
    submit(workdir, [a, b, c, d])
    final = wait_for("the first round to settle", lambda: settled(workdir), 300)
    assert final == {
        "evaluate/a": "done",
        "evaluate/b": "failed",
        "evaluate/c": "failed",
        "evaluate/d": "done",
    }
    recs = job_records(workdir)
    assert recs[f"b-{b.key[:8]}"]["state"] == "FAILED"
    assert recs[f"c-{c.key[:8]}"]["state"] == "CANCELLED", (
        "kill-on-invalid-dep cancels the dependents of a failure"
    )
    status = subprocess.run(
        [sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1 and "failing on purpose" in status.stdout
    flag.unlink()
    _, sub, live = submit(workdir, [a, b, c, d])
    assert sub.steps == 2 and not live
    wait_for("the relaunch to settle", lambda: settled(workdir), 300)
    assert set(states(workdir).values()) == {"done"}
    assert (tmp_path / "w" / "calls.log").read_text().split().count("a") == 1, "done steps are not run again"
    assert int((workdir / c.dirname / "value.txt").read_text()) == 111


def test_scancel_and_a_time_limit_are_seen_as_cancelled_and_timeout(cluster_up, tmp_path):
    sleeper = step("sleeper", {"sleep_s": 600})
    # 2 minutes, not 1: SLURM may send --signal=USR2@30 up to 60 s early (sbatch(1)); at a 1-minute
    # limit it once came a second after the start, before submitit's handler, and killed the task
    # (FAILED); from 2 minutes on it comes at least 30 s in
    limited = step("limited", {"sleep_s": 600}, timeout_min=2)
    workdir = tmp_path / "w"
    submit(workdir, [sleeper, limited])
    rec = workdir / "jobs" / "evaluate" / f"sleeper-{sleeper.key[:8]}.json"
    wait_for("the sleeper to run", lambda: states(workdir)["evaluate/sleeper"] == "running", 120, 1)
    job = json.loads(rec.read_text())
    subprocess.run(["scancel", job["job_id"]], check=True, timeout=10)
    # every states() polls SLURM once and rewrites the records whose state changed
    wait_for("the sleeper to be cancelled", lambda: states(workdir)["evaluate/sleeper"] == "failed", 60, 1)
    assert json.loads(rec.read_text())["state"] == "CANCELLED"
    wait_for("the limited step to fail", lambda: states(workdir)["evaluate/limited"] == "failed", 240, 2)
    with Manifest(workdir) as m:
        rows = {r["key"]: r for r in m.rows("jobs")}
    assert rows[limited.key]["state"] == "TIMEOUT" and rows[limited.key]["stdout"].endswith("_log.out")
    assert "running on until SLURM's limit" in Path(rows[limited.key]["stdout"]).read_text()


def test_a_signal_during_a_finished_jobs_exit_does_not_undo_its_completion(cluster_up, tmp_path):
    """USR2 (a time limit's signal) sent while a job whose step is done exits: the job ends
    COMPLETED, is not checkpointed or requeued, and its dependent runs. With a requeue left,
    submitit would otherwise checkpoint the finished job and requeue it."""
    late = step("late", {"add": 1, "usr2_at_exit": True})
    after = step("after", {"add": 10}, x=late)
    workdir = tmp_path / "w"
    submit(workdir, [late, after], PROFILE.model_copy(update={"max_requeues": 2}))
    wait_for("both steps to settle", lambda: settled(workdir), 300)
    assert set(states(workdir).values()) == {"done"}
    with Manifest(workdir) as m:
        rows = {r["key"]: r for r in m.rows("jobs")}
    assert rows[late.key]["state"] == "COMPLETED"
    log = Path(rows[late.key]["stdout"]).read_text()
    assert "USR2 and TERM are ignored" in log and "Requeued" not in log and "checkpoint" not in log.lower(), (
        log[-2000:]
    )


SUBMIT = """import json, sys
from pathlib import Path
from cdhpc.executors.launch_slurm import submit_plan
from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.config.profile import ClusterProfile
w = Path(sys.argv[1])
plan = Plan([StepSpec.from_dict(d) for d in json.loads((w / "plan.json").read_text())["steps"]])
submit_plan(w, plan, ClusterProfile.model_validate(json.loads(sys.argv[2])), "drill")
"""


def test_a_launcher_killed_between_sbatch_and_its_records_leaves_jobs_that_still_run_their_steps(
    cluster_up, tmp_path
):
    """A real sbatch that returns, then a launcher killed before it wrote submitit's pickles or
    the job records (a fake sbatch on PATH calls the real one and hangs). The next launch finds
    the job by name, cancels it (without pickles it could not run its steps) and submits the
    steps again; they finish."""
    a, b = step("a", {"add": 1}), step("b", {"add": 2})
    workdir = tmp_path / "w"
    submit(workdir, [])  # plan.json and the marker, nothing to submit
    (workdir / "plan.json").write_text(json.dumps({"steps": [a.to_dict(), b.to_dict()]}))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        f'#!/bin/sh\nout=$({shutil.which("sbatch")} "$@") || exit $?\n'
        f'echo "$out" > {tmp_path / "submitted"}\necho "$out"\nexec sleep 600\n'
    )
    (fake / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    killed = subprocess.Popen(
        [sys.executable, "-c", SUBMIT, str(workdir), PROFILE.model_dump_json()],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the real sbatch to return", lambda: (tmp_path / "submitted").is_file(), 60, 0.2)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(10)
    first = (tmp_path / "submitted").read_text().split()[-1]  # "Submitted batch job 353"
    assert list((workdir / "submitting").iterdir()) and not (workdir / "jobs").exists()
    _, sub, live = submit(workdir, [a, b])
    assert sub.steps == 2 and not live and not list((workdir / "submitting").iterdir())
    assert {r["job_id"] for r in job_records(workdir).values()} != {first}
    wait_for("the resubmitted steps", lambda: settled(workdir), 300)
    assert set(states(workdir).values()) == {"done"}
    assert _sacct(first).startswith("CANCELLED"), "the job that could not run was cancelled"


def _sacct(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=10
    ).stdout.split()
    return out[0] if out else ""


def test_without_accounting_status_converges_through_squeue(cluster_up, tmp_path):
    """slurmdbd stopped: sacct fails, squeue and the receipts carry the states to the end."""
    if os.geteuid() != 0:
        pytest.skip("stopping slurmdbd needs root")
    a = step("a", {"add": 1, "sleep_s": 3})
    b = step("b", {"add": 2}, x=a)
    workdir = tmp_path / "w"
    subprocess.run(["bash", str(ROOT / "slurm/dev-cluster/stop.sh"), "--dbd-only"], check=True, timeout=60)
    try:
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=30).returncode != 0
        submit(workdir, [a, b])

        # a step's receipt comes before its job's exit: wait for the job records too, which every
        # states() refreshes from squeue (sacct is down)
        def converged() -> dict[str, str] | None:
            now = settled(workdir)
            live = any(r["state"] in LIVE_JOB_STATES for r in job_records(workdir).values())
            return None if now is None or live else now

        final = wait_for("the states and job records to converge", converged, 300)
        assert final == {"evaluate/a": "done", "evaluate/b": "done"}
        assert {r["state"] for r in job_records(workdir).values()} == {"COMPLETED"}
    finally:
        subprocess.run(
            ["bash", str(ROOT / "slurm/dev-cluster/start.sh")], check=True, timeout=120, capture_output=True
        )


def test_cdhpc_cancel_stops_a_slurm_array_element_and_status_shows_it(cluster_up, tmp_path):
    sleepers = [step(f"s{i}", {"sleep_s": 600}) for i in range(2)]
    workdir = tmp_path / "w"
    submit(workdir, sleepers)
    wait_for("both elements to run", lambda: set(states(workdir).values()) == {"running"}, 120, 1)
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc", "cancel", str(workdir), "--step", "s0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "cancelled slurm job" in out.stdout, out.stderr
    rec = json.loads(next((workdir / "jobs" / "evaluate").glob("s0-*.json")).read_text())
    ref = f"{rec['job_id']}_{rec['array_index']}"
    wait_for(
        f"{ref} to leave the queue",
        lambda: (
            subprocess.run(
                ["squeue", "-h", "-r", "-t", "PD,R,CG", "-j", rec["job_id"], "-o", "%i"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.split()
            == [f"{rec['job_id']}_1"]
        ),
        60,
        1,
    )
    now = states(workdir)
    assert now == {"evaluate/s0": "failed", "evaluate/s1": "running"}, "only the chosen element is cancelled"
    subprocess.run(["scancel", rec["job_id"]], timeout=10)


def test_status_ui_follows_slurm_jobs_and_tails_their_logs(cluster_up, tmp_path):
    """The Textual app (headless pilot) on a SLURM sweep: array elements with their job ids,
    running then done through its own sacct polls, and the detail screen's tail of the job log."""
    import asyncio

    from cdhpc.ui.tui import StatusApp
    from cdhpc.ui.tui_screens import DetailScreen

    steps = [
        step(f"u{i}", {"add": i, "sleep_s": 8}, stage="select") for i in range(2)
    ]  # no evaluate params to show
    workdir = tmp_path / "w"
    submit(workdir, steps)
    wait_for("the jobs to run", lambda: set(states(workdir).values()) == {"running"}, 120, 1)

    async def drive():
        app = StatusApp(workdir, refresh_s=3600)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("2")
            await pilot.pause()
            rows = {r.name: r for r in app.shown}
            rec = json.loads(next((workdir / "jobs" / "select").glob("u0-*.json")).read_text())
            assert rows["u0"].state == "running" and rows["u0"].job == f"{rec['job_id']}_0"
            await pilot.press("enter")
            await pilot.pause(0.5)
            assert isinstance(app.screen, DetailScreen)
            app.screen.poll_log()
            assert any("step select/u0" in line for line in app.screen.query_one("#log").lines)
            await pilot.press("escape")
            deadline = time.monotonic() + 120
            while {r.state for r in app.shown} != {"done"} and time.monotonic() < deadline:
                await asyncio.sleep(2.5)  # the reader polls SLURM at most every 2 s
                app.refresh_data()
                await pilot.pause()
            assert {r.state for r in app.shown} == {"done"}

    asyncio.run(drive())

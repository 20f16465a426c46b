"""Submit limits and waves without a cluster: parsing recorded scontrol/sacctmgr/squeue answers,
the budget, the wave split (never above the budget, dependency order, arrays cut at packs), and
launches against a fake SLURM: the first wave and its continuation, a relaunch in the middle that
submits nothing twice and whose edges point at the first wave's jobs, a continuation's launch
that does not retry failures."""

from __future__ import annotations

import itertools
import json
import sys

import pytest

from cdhpc.config.profile import ClusterProfile
from cdhpc.executors.launch_slurm import submit_plan
from cdhpc.executors.sbatch import UnsafeSbatch, check_sbatch_script, plan_arrays, sbatch_script
from cdhpc.executors.slurm_limits import (
    Limits,
    combine,
    parse_assoc,
    parse_config,
    parse_qos,
    parse_queue,
    waves_needed,
)
from cdhpc.executors.waves import (
    WAVES_FILE,
    after_ids,
    continuation_parameters,
    cut_wave,
    wave_line,
    wave_room,
)
from cdhpc.sweep.plan import Plan, StepSpec

# recorded on the dev cluster of slurm/dev-cluster/ (Slurm 22.05), 2026-12-02
SCONTROL = """Configuration data as of 2026-12-02T13:20:01
AccountingStorageEnforce = none
MaxArraySize            = 1001
MaxJobCount             = 10000
MaxStepCount            = 40000
"""
ASSOC = "root||||normal|\nroot|||||\n"  # format=Account,MaxSubmit,MaxJobs,QOS,DefaultQOS (user root)
ASSOC_LIMITED = "proj1|200|40|normal,long|normal\nproj2|1000||long|\n"
QOS = "normal|50|10\nlong|||\n"  # format=Name,MaxSubmitPU,MaxJobsPU
SQUEUE = "12_0|root|RUNNING\n12_1|root|PENDING\n13|root|COMPLETED\n14|bob|PENDING\n"


def test_parsers_read_recorded_answers():
    assert parse_config(SCONTROL) == {"MaxArraySize": 1001, "MaxJobCount": 10000}
    assert parse_config("") == {"MaxArraySize": None, "MaxJobCount": None}
    assert parse_assoc(ASSOC) == (None, None, ["normal"])
    assert parse_assoc(ASSOC_LIMITED) == (
        200,
        40,
        ["long", "normal"],
    )  # tightest over accounts, default QOS or the only one
    assert parse_assoc(ASSOC_LIMITED, account="proj2") == (1000, None, ["long"])
    assert parse_qos(QOS, ["normal"]) == (50, 10) and parse_qos(QOS, ["long"]) == (None, None)
    assert parse_queue(SQUEUE, "root") == (2, 4)  # finished jobs leave MaxSubmitJobs, not MaxJobCount


def test_budget_is_the_tightest_limit_minus_the_queue_and_a_margin():
    lim = combine(
        parse_config(SCONTROL),
        parse_assoc(ASSOC),
        parse_qos(QOS, ["normal"]),
        parse_queue(SQUEUE, "root"),
        None,
    )
    assert (lim.max_submit, lim.submit_source, lim.max_running) == (50, "QOS normal", 10)
    assert lim.budget() == 50 - 2 - 3  # 5% of 50, rounded up
    controller = [
        combine(parse_config(SCONTROL), (None, None, []), (None, None), (0, held), None)
        for held in (9990, 9000)
    ]
    assert [c.budget() for c in controller] == [
        0,
        1000 - 500,
    ]  # other users fill MaxJobCount too: 5% kept free
    assert combine(parse_config(""), (None, None, []), (None, None), (0, 0), None).budget() is None
    over = combine(parse_config(SCONTROL), (1000, None, []), (None, None), (0, 0), 20)
    assert (over.max_submit, over.submit_source, over.budget()) == (20, "profile max_submitted_jobs", 19)
    assert Limits(max_array_size=1001).array_cap(5000) == 1000 and Limits().array_cap(5000) == 5000
    assert "unknown" in Limits().describe() and "budget 19 job(s)" in over.describe()


def test_waves_needed():
    assert waves_needed([], 10) == 0 and waves_needed([30], None) == 1
    assert waves_needed([5, 5], 10) == 1  # fits: no continuation
    assert waves_needed([5, 5, 1], 10) == 2  # 9 + continuation, then 2
    assert waves_needed([100], 11) == 1 + 9  # 10 a wave until the last takes up to 11
    assert waves_needed([5], 1) is None


def step(name: str, inputs: dict | None = None, stage: str = "evaluate", per_job: int = 1) -> StepSpec:
    res = {
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 1,
        "timeout_min": 5,
        "steps_per_job": per_job,
    }
    return StepSpec(stage, name, f"{name:0<16}"[:16], {}, inputs or {}, {}, res)


def layered(width: int, depth: int) -> Plan:
    """`depth` stages of `width` steps; step i of a layer reads step i of the layer before."""
    stages = ["prepare", "pretrain", "evaluate", "aggregate"]
    steps, prev = [], []
    for d in range(depth):
        layer = [step(f"s{d}-{i}", {"x": prev[i].key} if prev else {}, stages[d]) for i in range(width)]
        steps += layer
        prev = layer
    return Plan(steps)


def test_a_wave_is_a_dependency_closed_prefix_never_above_its_room():
    plan = layered(7, 3)
    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, 1000)
    for room in range(25):
        wave, left = cut_wave(arrays, room)
        jobs = sum(len(a.packs) for a in wave)
        assert jobs <= room and left == len(plan.steps) - sum(len(a.keys) for a in wave)
        assert jobs == min(room, 21), "the wave fills its room (the array that does not fit is cut at a pack)"
        refs = {a.ref for a in wave}
        assert all(r.job_id in refs for a in wave for r in a.after), "every upstream array is in the wave"
    assert wave_room(arrays, 21) is None and wave_room(arrays, 20) == 19 and wave_room(arrays, None) is None


def test_continuation_waits_for_the_wave_and_the_live_jobs():
    assert after_ids(["5", "6"], ["3", "5"]) == ["3", "5", "6"]
    assert after_ids([str(i) for i in range(300)], [], limit=200)[0] == "100"
    p = continuation_parameters(ClusterProfile(partition="debug", qos="normal"), "tiny", ["5", "6"])
    assert (p["job_name"], p["dependency"], p["cpus_per_task"], p["partition"]) == (
        "cdhpc.tiny.continue",
        "afterany:5:6",
        1,
        "debug",
    )
    assert continuation_parameters(ClusterProfile(), "t", [], 600)["additional_parameters"] == {
        "begin": "now+600"
    }
    assert (
        wave_line({"wave": 2, "left": 40, "continuation": "99", "after": ["1", "2", "3", "4"]})
        == "wave 2: 40 step(s) wait for the next wave, job 99 after job(s) 2 3 4 (+1)"
    )
    assert wave_line(None) is None


# ----------------------------------------------------------------------------- a fake SLURM
class FakeSlurm:
    """sbatch, sacct and the continuation, in memory: every job stays where the test puts it."""

    def __init__(self, monkeypatch):
        self.ids = itertools.count(100)
        self.jobs: dict[str, str] = {}  # job or element -> state
        self.sbatch: list[dict] = []  # params of each array
        self.continuations: list[list[str]] = []
        monkeypatch.setattr("cdhpc.executors.slurm.SlurmScheduler._sbatch", self.submit)
        monkeypatch.setattr(
            "cdhpc.executors.slurm_queue.query_states", lambda ids, wanted=(): (dict(self.jobs), True)
        )
        monkeypatch.setattr("cdhpc.executors.waves.submit_continuation", self.cont)
        monkeypatch.setattr("cdhpc.executors.waves.cancel_old", lambda doc: None)

    def submit(self, array, params, attempt):
        base = str(next(self.ids))
        self.sbatch.append({**params, "id": base, "keys": array.keys})
        job = type("Job", (), {"paths": None})
        refs = [base] if len(array.packs) == 1 else [f"{base}_{i}" for i in range(len(array.packs))]
        for r in refs:
            self.jobs[r] = "PENDING"
        return [type("J", (job,), {"job_id": r})() for r in refs]

    def cont(self, workdir, profile, sweep, after, begin_s=0, argv=None):
        self.continuations.append(after)
        return str(next(self.ids))

    def queued(self) -> int:
        return sum(s in ("PENDING", "RUNNING") for s in self.jobs.values())


def test_waves_on_a_fake_cluster_submit_nothing_twice_and_edges_cross_waves(tmp_path, monkeypatch):
    slurm = FakeSlurm(monkeypatch)
    plan = layered(6, 3)  # 18 steps: a prepare array of 6, then one job per step (each its own upstream)
    (tmp_path / "plan.json").write_text(json.dumps({"steps": [s.to_dict() for s in plan.steps]}))
    prof = ClusterProfile(submit_interval_s=0)

    def launch(limit: int, **kw):
        return submit_plan(
            tmp_path, plan, prof, "t", limits=Limits(max_submit=limit, queued_mine=slurm.queued()), **kw
        )

    _, sub, _ = launch(10)
    assert (
        slurm.queued() == 8 and sub.jobs == 8 and sub.left == 10
    )  # budget 10 - margin 1, minus the continuation
    assert (
        slurm.continuations == [sub.job_ids]
        and json.loads((tmp_path / "waves.json").read_text())["wave"] == 1
    )
    first = [k for p in slurm.sbatch for k in p["keys"]]
    for j in list(slurm.jobs)[:4]:
        slurm.jobs[j] = "RUNNING"
    _, again, live = launch(10)  # a relaunch in the middle, the queue full: nothing submitted twice
    assert (again.jobs, again.left, len(live)) == (0, 10, 8) and [
        k for p in slurm.sbatch for k in p["keys"]
    ] == first
    assert set(slurm.continuations[-1]) == {p["id"] for p in slurm.sbatch}, (
        "the new continuation waits for the live wave"
    )
    n = len(slurm.sbatch)
    _, rest, _ = launch(30)  # more room: the rest, each step after exactly its input's job of either wave
    submitted = [k for p in slurm.sbatch for k in p["keys"]]
    assert rest.jobs == 10 and rest.left == 0 and len(submitted) == len(set(submitted)) == 18
    ref = {}
    for p in slurm.sbatch:
        for i, k in enumerate(p["keys"]):
            ref[k] = p["id"] if len(p["keys"]) == 1 else f"{p['id']}_{i}"
    for p in slurm.sbatch[n:]:
        (key,) = p["keys"]
        assert p["dependency"] == "afterok:" + ref[plan.by_key()[key].inputs["x"]]
    wave1 = {p["id"] for p in slurm.sbatch[:n]}
    crossing = [
        p for p in slurm.sbatch[n:] if p["dependency"].removeprefix("afterok:").split("_")[0] in wave1
    ]
    assert len(crossing) == 6, (
        "4 pretrain steps after prepare elements, 2 evaluate steps after pretrain jobs of wave 1"
    )
    doc = json.loads((tmp_path / "waves.json").read_text())
    assert (doc["wave"], doc["continuation"], doc["note"]) == (2, None, "last wave submitted")


def test_a_continuation_does_not_retry_failed_steps(tmp_path, monkeypatch):
    slurm = FakeSlurm(monkeypatch)
    plan = layered(4, 2)
    (tmp_path / "plan.json").write_text(json.dumps({"steps": [s.to_dict() for s in plan.steps]}))
    prof = ClusterProfile(submit_interval_s=0)
    _, sub, _ = submit_plan(tmp_path, plan, prof, "t", limits=Limits(max_submit=6))
    assert sub.jobs == 4 and sub.left == 4 and slurm.sbatch[0]["keys"] == [s.key for s in plan.steps[:4]]
    for j in slurm.jobs:
        slurm.jobs[j] = "FAILED"  # the whole first layer failed: the second must not run, nor they again
    n = len(slurm.sbatch)
    _, sub, live = submit_plan(tmp_path, plan, prof, "t", missing_only=True, limits=Limits(max_submit=6))
    assert (sub.jobs, sub.left, live, len(slurm.sbatch)) == (0, 0, {}, n)
    assert json.loads((tmp_path / "waves.json").read_text())["continuation"] is None, "the chain ends"
    _, sub, _ = submit_plan(
        tmp_path, plan, prof, "t", limits=Limits(max_submit=6)
    )  # the user's launch retries
    assert sub.jobs == 4 and sub.left == 4


def test_the_continuations_script_is_checked_like_the_steps():
    """Rendered by submitit and checked line by line before sbatch: a value with a line break
    (which the profile's own checks would refuse first) does not reach the script."""
    good = continuation_parameters(
        ClusterProfile(partition="debug", account="p1"), "tiny", ["5"], begin_s=600
    )
    text = sbatch_script(good, "/W/logs/continue", 1, "python -u -m submitit.core._submit /W/logs/continue")
    check_sbatch_script(text, good, good["job_name"])
    assert "#SBATCH --dependency=afterany:5" in text and "#SBATCH --begin=now+600" in text
    evil = continuation_parameters(
        ClusterProfile.model_construct(partition="debug\n#SBATCH --uid=0"), "tiny", []
    )
    with pytest.raises(UnsafeSbatch, match="line break"):
        check_sbatch_script(sbatch_script(evil, "/W", 1, "python"), evil, evil["job_name"])


def test_cancel_also_cancels_the_continuation(tmp_path, monkeypatch):
    from cdhpc.ui.actions import cancel_continuation

    calls = []
    monkeypatch.setattr("cdhpc.ui.actions.subprocess.run", lambda cmd, **kw: calls.append(cmd))
    assert cancel_continuation(tmp_path) == [] and calls == []  # no waves: nothing to cancel
    (tmp_path / WAVES_FILE).write_text(
        json.dumps({"wave": 2, "left": 9, "continuation": "77", "after": ["70"]})
    )
    assert "77" in cancel_continuation(tmp_path)[0] and calls == [["scancel", "77"]]
    doc = json.loads((tmp_path / WAVES_FILE).read_text())
    assert doc["continuation"] is None and "cancelled" in wave_line(doc)


def test_the_continuation_runs_the_launch_without_its_own_slurm_settings(tmp_path, monkeypatch, capsys):
    """The launch it runs gets no SLURM_* variables of the continuation's job (sbatch would pass
    them on to the next wave) but the job's id, so it never cancels the job running it."""
    from cdhpc.executors.waves import OWN_JOB_ENV, ContinueSweep

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "2048")
    probe = (
        "import os; print(sorted(k for k in os.environ if k.startswith('SLURM_')), "
        f"os.environ['{OWN_JOB_ENV}'])"
    )
    assert ContinueSweep(str(tmp_path), [sys.executable, "-c", probe])() == 0
    assert capsys.readouterr().out.strip() == "[] 42"
    with pytest.raises(RuntimeError, match="exited 3"):
        ContinueSweep(str(tmp_path), [sys.executable, "-c", "raise SystemExit(3)"])()
    assert ContinueSweep("/w").command()[-3:] == ["/w/sweep.resolved.yaml", "workdir=/w", "--missing-only"]


def test_a_failed_continuation_says_so_instead_of_a_next_wave(tmp_path, monkeypatch):
    """Its launch failed: waves.json no longer promises a next wave, and says to launch again;
    a continuation that a later launch replaced leaves the new one alone."""
    from cdhpc.executors.waves import ContinueSweep

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    failing = [sys.executable, "-c", "import sys; sys.exit('cdhpc: MaxJobCount reached')"]
    (tmp_path / WAVES_FILE).write_text(
        json.dumps({"wave": 2, "left": 9, "continuation": "77", "after": ["70"]})
    )
    with pytest.raises(RuntimeError, match="exited 1"):
        ContinueSweep(str(tmp_path), failing)()
    line = wave_line(json.loads((tmp_path / WAVES_FILE).read_text()))
    assert "continuation job 77 failed" in line and "MaxJobCount reached" in line and "launch again" in line
    (tmp_path / WAVES_FILE).write_text(
        json.dumps({"wave": 3, "left": 4, "continuation": "90", "after": ["80"]})
    )
    with pytest.raises(RuntimeError):
        ContinueSweep(str(tmp_path), failing)()
    assert json.loads((tmp_path / WAVES_FILE).read_text())["continuation"] == "90"


@pytest.mark.slow  # two CLI processes
def test_cancel_between_waves_cancels_the_pending_continuation(tmp_path):
    """`cdhpc cancel` when no step is queued or running (the continuation waits for the next
    wave's turn): it cancels the continuation and exits 0; with nothing at all, exit 1."""
    import os
    import subprocess

    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "waves"}))
    (workdir / "plan.json").write_text(json.dumps({"steps": []}))
    (workdir / WAVES_FILE).write_text(
        json.dumps({"wave": 1, "left": 9, "continuation": "77", "after": ["70"]})
    )
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scancel.log"}\n')
    (fake / "scancel").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")

    def cancel():
        return subprocess.run(
            [sys.executable, "-m", "cdhpc", "cancel", str(workdir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = cancel()
    assert first.returncode == 0 and "continuation job 77" in first.stdout, first.stderr
    assert (tmp_path / "scancel.log").read_text().split() == ["77"]
    again = cancel()
    assert again.returncode == 1 and "nothing to cancel" in again.stderr

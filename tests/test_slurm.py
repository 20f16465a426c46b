"""The SLURM executor without a cluster: the sbatch lines of every stage (golden file), array
chunking at MaxArraySize, exact dependency edges, parsing sacct/squeue, cluster profiles and
their errors, memory after OUT_OF_MEMORY, sbatch retries. Regenerate the golden file on purpose
with UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc.config import ConfigError, load_config
from cdhpc.config.profile import ClusterProfile, apply_profile, load_profile
from cdhpc.executors.sbatch import (
    ArraySpec,
    JobRef,
    check_sbatch_script,
    dependency_string,
    plan_arrays,
    sbatch_parameters,
    sbatch_script,
)
from cdhpc.executors.slurm import SlurmScheduler, more_memory
from cdhpc.executors.slurm_queue import LEFT_QUEUE, expand_job_id, parse_states, record_state
from cdhpc.sweep.plan import Plan, StepSpec, plan_sweep

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "sbatch_tiny_dev.txt"
SWEEP = ROOT / "configs" / "tiny.yaml"


def tiny_on_dev(*overrides: str):
    cfg = load_config(SWEEP, ["executor=slurm", "executor.profile=dev", *overrides])
    profile = load_profile(cfg, SWEEP)
    return apply_profile(cfg, profile), profile


def step(name: str, stage: str = "evaluate", inputs: dict | None = None, per_job: int = 1, **res) -> StepSpec:
    resources = {
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 4,
        "timeout_min": 10,
        "steps_per_job": per_job,
    } | res
    return StepSpec(stage, name, f"{name:0<16}"[:16], {}, inputs or {}, {}, resources)


def render(array: ArraySpec, params: dict) -> str:
    """The script submitit writes (its own renderer), checked as the scheduler checks it before sbatch."""
    folder = f"/WORKDIR/logs/{array.stage}"  # absolute: submitit would prefix a relative one with the cwd
    text = sbatch_script(params, folder, len(array.packs), f"python -u -m submitit.core._submit {folder}")
    check_sbatch_script(text, params, params["job_name"])
    return text


def test_sbatch_of_every_stage_matches_the_golden_file():
    """The sbatch script submitit writes for the first array of each stage of the tiny sweep on
    the dev profile: resources, time = timeout x steps per job, throttle, afterok edges, requeue
    (and each passes the line-by-line check the scheduler makes before sbatch)."""
    cfg, profile = tiny_on_dev()
    plan = plan_sweep(cfg)
    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, profile.max_array_size)
    text = []
    for stage in dict.fromkeys(a.stage for a in arrays):
        a = next(a for a in arrays if a.stage == stage)
        params = sbatch_parameters(a, profile, f"cdhpc.tiny.{stage}.NAME", dependency_string(a.after, {}))
        text.append(f"===== {stage}: {len(a.packs)} job(s), {len(a.keys)} step(s)\n{render(a, params)}")
    got = "\n".join(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "sbatch lines changed; regenerate on purpose with UPDATE_GOLDEN=1"


def test_steps_with_the_same_upstream_share_an_array_and_wait_for_exactly_their_inputs():
    cfg, profile = tiny_on_dev()
    plan = plan_sweep(cfg)
    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, profile.max_array_size)
    where = {k: (a.ref, i) for a in arrays for i, pack in enumerate(a.packs) for k in (s.key for s in pack)}
    by_key = plan.by_key()
    for a in arrays:
        for pack in a.packs:
            for s in pack:
                want = set()
                for k in s.inputs.values():
                    ref, i = where[k]
                    upstream = next(u for u in arrays if u.ref == ref)
                    want.add(str(JobRef(ref, i if len(upstream.packs) > 1 else None)))
                assert {str(r) for r in a.after} == want, f"{s.stage}/{s.name}"
                assert all(
                    arrays.index(next(u for u in arrays if u.ref == r.job_id)) < arrays.index(a)
                    for r in a.after
                )
    evaluate = [a for a in arrays if a.stage == "evaluate"]
    runs = {by_key[s.inputs["model"]].name for a in evaluate for p in a.packs for s in p}
    assert len(evaluate) == len(runs), "one evaluate array per trained run"
    assert all(len(p) == 21 for a in evaluate for p in a.packs), "an array per run: one job of its 21 steps"
    assert sum(len(a.packs) for a in arrays) == 32 and len(arrays) == 25
    generate = [len(p) for a in arrays if a.stage == "generate" for p in a.packs]
    assert sorted(generate) == [2, 2, 4, 4], "steps_per_job: 4; cd-small's amateur comes later"


def test_arrays_split_at_max_array_size_and_dependents_wait_for_every_part():
    prep = step("prep", "prepare")
    evals = [step(f"e{i:02d}", inputs={"data": prep.key}) for i in range(25)]
    agg = step("agg", "aggregate", {e.name: e.key for e in evals})
    plan = Plan([prep, *evals, agg])
    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, max_array_size=10)
    assert [(a.stage, len(a.packs)) for a in arrays] == [
        ("prepare", 1),
        ("evaluate", 10),
        ("evaluate", 10),
        ("evaluate", 5),
        ("aggregate", 1),
    ]
    assert [str(r) for r in arrays[1].after] == ["@0"]
    sizes = {"@1": 10, "@2": 10, "@3": 5}
    assert dependency_string(arrays[-1].after, sizes) == "afterok:@1:@2:@3"


def test_packing_and_done_or_live_inputs():
    prep = step("prep", "prepare")
    evals = [step(f"e{i}", inputs={"data": prep.key}, per_job=4) for i in range(10)]
    plan = Plan([prep, *evals])
    todo = {e.key for e in evals}
    done_input = plan_arrays(plan, todo, {}, 1000)
    assert [len(p) for p in done_input[0].packs] == [4, 4, 2] and done_input[0].after == []
    live_input = plan_arrays(plan, todo, {prep.key: JobRef("77", 3)}, 1000)
    assert [str(r) for r in live_input[0].after] == ["77_3"]
    assert dependency_string(live_input[0].after, {}) == "afterok:77_3"


def test_dependency_string_collapses_whole_arrays_only():
    refs = [JobRef("5", 0), JobRef("5", 1), JobRef("9", 2), JobRef("12")]
    assert dependency_string(refs, {"5": 2, "9": 4}) == "afterok:12:5:9_2"
    assert dependency_string([], {}) is None


def test_oom_steps_get_more_memory_in_their_own_array():
    a, b = step("a", mem_gb=4), step("b", mem_gb=4)
    plan = Plan([a, b])
    jobs = {a.key: {"state": "OUT_OF_MEMORY", "mem_gb": 4.0}, b.key: {"state": "FAILED", "mem_gb": 4.0}}
    res = more_memory(plan, {a.key, b.key}, jobs, ClusterProfile(oom_mem_factor=2.0, max_mem_gb=6))
    assert res == {a.key: {**a.resources, "mem_gb": 6}}
    arrays = plan_arrays(plan, {a.key, b.key}, {}, 1000, res)
    assert sorted(x.resources["mem_gb"] for x in arrays) == [4, 6]


def test_parse_states_expands_ranges_and_prefers_element_lines():
    sacct = (
        "3_0|COMPLETED\n3_1|RUNNING\n3_[2-4%2]|PENDING\n7|CANCELLED by 0\n8|REQUEUED\n8|RUNNING\n"
        "9.batch|FAILED\n"
    )
    assert parse_states(sacct) == {
        "3_0": "COMPLETED",
        "3_1": "RUNNING",
        "3_2": "PENDING",
        "3_3": "PENDING",
        "3_4": "PENDING",
        "7": "CANCELLED",
        "8": "RUNNING",
    }
    assert expand_job_id("12_[0,3-4]") == ["12_0", "12_3", "12_4"]


def test_record_state_after_a_job_left_the_queue():
    rec = {"job_id": "4", "array_index": 1, "state": "PENDING", "submitted": 1000.0}
    assert record_state(rec, {"4_1": "TIMEOUT"}, complete=False, now=1001) == "TIMEOUT"
    assert record_state(rec, {}, complete=False, now=1010) == "PENDING", "sacct may lag a fresh submission"
    assert record_state(rec, {}, complete=True, now=1010) == "PENDING", "nothing is declared gone at once"
    assert record_state(rec, {}, complete=True, now=1200) == LEFT_QUEUE, "squeue lists every job it knows"
    assert record_state(rec, {}, complete=False, now=1200) == "PENDING"
    assert record_state(rec, {}, complete=False, now=2000) == LEFT_QUEUE


def test_transient_sbatch_errors_are_retried_others_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr("cdhpc.executors.slurm.find_jobs_by_name", lambda names: {})
    monkeypatch.setattr("cdhpc.executors.slurm.time.sleep", lambda s: None)
    calls = []

    class FakeJob:  # a fake: sbatch's answer, without a cluster
        job_id = "41"
        paths = type("P", (), {"stdout": "o", "stderr": "e"})()

    def flaky_sbatch(array, params, attempt):
        calls.append(params["job_name"])
        if len(calls) < 3:
            raise RuntimeError(
                "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
            )
        return [FakeJob()]

    s = step("x", "prepare")
    sched = SlurmScheduler(tmp_path, ClusterProfile(submit_retries=3), "t", submit_fn=flaky_sbatch)
    out = sched.submit(Plan([s]), {s.key}, {}, {})
    assert len(calls) == 3 and len(set(calls)) == 1 and out.job_ids == ["41"]
    rec = json.loads((tmp_path / "jobs" / "prepare" / f"x-{s.key[:8]}.json").read_text())
    assert (rec["job_id"], rec["state"], rec["executor"]) == ("41", "PENDING", "slurm")
    assert not list((tmp_path / "submitting").iterdir()), "the intent is removed once the job is recorded"

    def bad_partition(array, params, attempt):
        raise RuntimeError("sbatch: error: invalid partition specified: gpu")

    with pytest.raises(RuntimeError, match="invalid partition"):
        SlurmScheduler(tmp_path, ClusterProfile(), "t", submit_fn=bad_partition).submit(
            Plan([s]), {s.key}, {}, {}
        )


@pytest.mark.parametrize(
    "said, named",
    [
        (
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n"
            "sbatch: error: Batch job submission failed: Resource temporarily unavailable",
            "MaxJobCount",
        ),
        ("sbatch: error: QOSMaxSubmitJobPerUserLimit", "MaxSubmitJobsPerUser"),
        ("sbatch: error: AssocMaxSubmitJobLimit", "association's MaxSubmitJobs"),
        ("sbatch: error: Batch job submission failed: Invalid job array specification", "MaxArraySize"),
    ],
)
def test_a_limit_error_stops_the_submission_at_once_naming_the_limit(tmp_path, monkeypatch, said, named):
    monkeypatch.setattr("cdhpc.executors.slurm.time.sleep", lambda s: pytest.fail("a limit is not retried"))
    calls = []

    def refused(array, params, attempt):
        calls.append(1)
        raise RuntimeError(said)

    s = step("x", "prepare")
    with pytest.raises(RuntimeError, match=named) as e:
        SlurmScheduler(tmp_path, ClusterProfile(submit_retries=5), "t", submit_fn=refused).submit(
            Plan([s]), {s.key}, {}, {}
        )
    assert len(calls) == 1 and "launch again" in str(e.value)


def test_an_intents_job_is_adopted_with_its_pickles_and_cancelled_without(tmp_path, monkeypatch):
    """A launcher killed after submitit moved the pickles into place left a job that can run:
    it is recorded. One killed before that left a job that cannot: it is cancelled."""
    a, b = step("a", "evaluate"), step("b", "evaluate")
    sched = SlurmScheduler(tmp_path, ClusterProfile(), "t")
    cancelled = []
    monkeypatch.setattr("cdhpc.executors.slurm.run_slurm", lambda cmd, timeout_s=60: cancelled.append(cmd))
    monkeypatch.setattr(
        "cdhpc.executors.slurm.find_jobs_by_name", lambda names: {n: ["77_0", "77_1"] for n in names}
    )
    for pickled in (True, False):
        sched.intent_dir().mkdir(exist_ok=True)
        (sched.intent_dir() / "n.json").write_text(
            json.dumps(
                {
                    "name": "n",
                    "stage": "evaluate",
                    "packs": [[a.key], [b.key]],
                    "attempts": {},
                    "resources": {},
                }
            )
        )
        sched.log_dir("evaluate").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            pkl = sched.log_dir("evaluate") / f"77_{i}_submitted.pkl"
            pkl.write_bytes(b"x") if pickled else pkl.unlink()
        assert sched.adopt_intents(Plan([a, b])) == (2 if pickled else 0)
        assert cancelled == ([] if pickled else [["scancel", "77"]])
        assert not list(sched.intent_dir().iterdir())
    rec = json.loads((tmp_path / "jobs" / "evaluate" / f"b-{b.key[:8]}.json").read_text())
    assert (rec["job_id"], rec["array_index"]) == ("77", 1)


# ----------------------------------------------------------------------------- profiles
def write(tmp_path: Path, text: str, name: str = "site") -> Path:
    (tmp_path / "slurm").mkdir(exist_ok=True)
    p = tmp_path / "slurm" / f"{name}.yaml"
    p.write_text(text)
    return p


def profile_error(tmp_path: Path, text: str) -> str:
    write(tmp_path, text)
    cfg = load_config(SWEEP, ["executor=slurm", "executor.profile=" + str(tmp_path / "slurm" / "site.yaml")])
    with pytest.raises(ConfigError) as e:
        load_profile(cfg, SWEEP)
    return str(e.value)


def test_profile_errors_name_the_file_line_and_the_valid_names(tmp_path):
    err = profile_error(tmp_path, "partition: gpu\nstages:\n  pretrain: {mem_gbs: 3}\n")
    assert err.startswith("invalid cluster profile ") and "site.yaml (1 error):" in err, (
        "names what the file is"
    )
    assert (
        "site.yaml:3: stages.pretrain.mem_gbs: unknown key; did you mean 'mem_gb'?" in err
        and "timeout_min" in err
    )
    err = profile_error(tmp_path, "sbatch: {exlcude: node1}\n")
    assert (
        "site.yaml:1: sbatch.exlcude: not a submitit SlurmExecutor parameter; did you mean 'exclude'?" in err
    )
    assert "mail_user" in err, "lists the valid parameters"
    err = profile_error(tmp_path, "stages: {train: {mem_gb: 3}}\n")
    assert "unknown stage 'train'" in err
    err = profile_error(tmp_path, "gpus_per_node: 4\nstages: {pretrain: {gpus_per_node: 8}}\n")
    assert "asks for 8 GPUs per node" in err
    err = profile_error(tmp_path, "signal_delay_s: 90\nstages: {select: {timeout_min: 2}}\n")
    assert "site.yaml:2: stages.select.timeout_min = 2: a time limit of 120 s is gone" in err
    assert "give more than 2 min" in err and "stages.generate" not in err


def test_sweep_resources_override_the_profile_key_by_key(tmp_path):
    write(tmp_path, "stages: {evaluate: {mem_gb: 7, timeout_min: 5, partition: short}}\n")
    cfg = load_config(SWEEP, ["executor=slurm", f"executor.profile={tmp_path / 'slurm' / 'site.yaml'}"])
    cfg = apply_profile(cfg, load_profile(cfg, SWEEP))
    ev = cfg.executor.resources_for("evaluate")
    assert (ev.mem_gb, ev.timeout_min, ev.steps_per_job) == (7, 5, 42), (
        "steps_per_job: 42 comes from tiny.yaml"
    )


@pytest.mark.slow
def test_launch_with_a_missing_profile_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "w"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(SWEEP),
            "executor=slurm",
            "executor.profile=nope",
            f"workdir={workdir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "executor.profile = 'nope': no such cluster profile" in out.stderr and "dev" in out.stderr
    assert not workdir.exists()


def test_executor_shorthand_keeps_the_other_executor_keys():
    cfg = load_config(SWEEP, ["executor=slurm"])
    assert cfg.executor.kind == "slurm" and cfg.executor.resources_for("evaluate").steps_per_job == 42


@pytest.mark.slow
def test_launch_without_sbatch_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "w"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no SLURM client commands
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(SWEEP),
            "executor=slurm",
            "executor.profile=dev",
            f"workdir={workdir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 2 and "sbatch is not on PATH" in out.stderr, out.stderr
    assert not workdir.exists()

"""Hostile cluster profiles (issue #15): a value with a line break, a control character or a
character its field does not take must never reach sbatch. Each is refused when the profile loads
(the code path of --dry-run and of the launch), with the file, the key path, the value's repr and
what is allowed; the rendered script is checked again line by line before any sbatch. No SLURM is
needed: the scheduler tests use a fake sbatch (a shell script that records what it was given)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc.config import ConfigError, load_config
from cdhpc.config.profile import ClusterProfile, StageProfile, resolve_profile
from cdhpc.executors.sbatch import (
    UnsafeSbatch,
    check_sbatch_script,
    dependency_string,
    job_name,
    plan_arrays,
    sbatch_parameters,
    sbatch_script,
)
from cdhpc.executors.slurm import SlurmScheduler
from cdhpc.sweep.plan import Plan, StepSpec, plan_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "configs" / "tiny.yaml"

# (profile text, key path as the error prints it, what the error must also say)
HOSTILE = {
    "partition": (
        'partition: "debug\\n#SBATCH --uid=0"\n',
        "partition = 'debug\\n#SBATCH --uid=0'",
        "has a line break",
    ),
    "account": (
        'account: "lab\\n#SBATCH --uid=0"\n',
        "account = 'lab\\n#SBATCH --uid=0'",
        "allowed: an account name",
    ),
    "qos": ('qos: "normal\\rx"\n', "qos = 'normal\\rx'", "has a line break"),
    "stage partition": (
        'stages: {pretrain: {partition: "gpu\\ntouch /tmp/x"}}\n',
        "stages.pretrain.partition = 'gpu\\ntouch /tmp/x'",
        "allowed: partition names",
    ),
    "stage qos": (
        'stages: {evaluate: {qos: "a b"}}\n',
        "stages.evaluate.qos = 'a b'",
        "has ' ', not allowed here",
    ),
    "constraint": ("constraint: 'a100;id'\n", "constraint = 'a100;id'", "has ';', not allowed here"),
    "comment": (
        'sbatch: {comment: "c\\ntouch /tmp/x\\n: \'"}\n',
        'sbatch.comment = "c\\ntouch /tmp/x\\n: \'"',
        "allowed: printable text on one line",
    ),
    "stage comment": (
        'stages: {generate: {sbatch: {comment: "\\n touch /tmp/x"}}}\n',
        "stages.generate.sbatch.comment = '\\n touch /tmp/x'",
        "has a line break",
    ),
    "control char": (
        'sbatch: {comment: "red \\e[31m"}\n',
        "sbatch.comment = 'red \\x1b[31m'",
        "has the control (non-printable) character '\\x1b'",
    ),
    "NUL byte": ('sbatch: {comment: "a\\0b"}\n', "sbatch.comment = 'a\\x00b'", "character '\\x00'"),
    "line separator": ('sbatch: {comment: "a\\Lb"}\n', "sbatch.comment = 'a\\u2028b'", "character '\\u2028'"),
    "additional key": (
        'sbatch: {additional_parameters: {"mail-type\\n#SBATCH --uid": 0}}\n',
        "sbatch.additional_parameters.'mail-type\\n#SBATCH --uid': key has a line break",
        "",
    ),
    "additional key form": (
        "sbatch: {additional_parameters: {'uid=0 --x': 1}}\n",
        "sbatch.additional_parameters.uid=0 --x: key is not an sbatch option name",
        "mail-type",
    ),
    "additional value": (
        'sbatch: {additional_parameters: {mail-type: "END\\n#SBATCH --uid=0"}}\n',
        "sbatch.additional_parameters.mail-type = 'END\\n#SBATCH --uid=0'",
        "has a line break",
    ),
    "additional job name": (
        "sbatch: {additional_parameters: {job_name: other}}\n",
        "sbatch.additional_parameters.job_name: key is set by cdhpc",
        "",
    ),
    "not a parameter": (
        "sbatch: {uid: 0}\n",
        "sbatch.uid: not a submitit SlurmExecutor parameter",
        "additional_parameters",
    ),
    "teardown": (
        'sbatch: {teardown: ["echo ok", "a\\nb"]}\n',
        "sbatch.teardown = ['echo ok', 'a\\nb']",
        "item 1 has a line break",
    ),
    "mem_per_cpu": (
        'sbatch: {mem_per_cpu: "4G\\n#SBATCH --uid=0"}\n',
        "sbatch.mem_per_cpu = '4G\\n#SBATCH --uid=0'",
        "allowed: a size",
    ),
    "exclusive": (
        "sbatch: {exclusive: always}\n",
        "sbatch.exclusive = 'always'",
        "allowed: true, false, user, mcs or topo",
    ),
    "use_srun": ('sbatch: {use_srun: "no\\n"}\n', "sbatch.use_srun = 'no\\n'", "is not true or false"),
    "not a mapping": (
        "sbatch: {additional_parameters: [uid]}\n",
        "sbatch.additional_parameters = ['uid']",
        "must be a mapping",
    ),
}


def write_profile(tmp_path: Path, text: str, name: str = "site") -> Path:
    (tmp_path / "slurm").mkdir(exist_ok=True)
    path = tmp_path / "slurm" / f"{name}.yaml"
    path.write_text(text)
    return path


def load(path: Path, *overrides: str):
    """What `python -m cdhpc.launch SWEEP executor=slurm executor.profile=PATH` (with or without
    --dry-run) does before planning."""
    cfg = load_config(
        SWEEP, ["executor=slurm", f"executor.profile={path}", *overrides], allow_missing_paths=True
    )
    return resolve_profile(cfg, SWEEP)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_profile_values_are_refused_when_the_profile_loads(tmp_path, case):
    text, where, what = HOSTILE[case]
    path = write_profile(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    head, *issues = str(e.value).split("\n")
    assert head.startswith(f"invalid cluster profile {path}") and len(issues) == 1, str(e.value)
    assert issues[0].startswith(f"  {path}:"), "names the file and line"
    assert where in issues[0] and what in issues[0], issues[0]


def test_benign_values_of_every_checked_field_load(tmp_path):
    path = write_profile(
        tmp_path,
        """\
partition: gpu,gpu-long
account: lab_ai.2024
qos: high+
constraint: "[a100*2&h100]|(l40s,!old)"
sbatch:
  comment: "sweep tiny: paper run (é) 50%"
  exclude: "node[01-04],gpu7"
  gres: "gpu:a100:2,shard:1"
  mail_type: END,FAIL
  mail_user: me@lab.example.org
  mem_per_cpu: 4G
  exclusive: user
  wckey: "*proj-1"
  teardown: ["echo done"]
  additional_parameters: {reservation: maint, nice: 10, hint: nomultithread, overcommit: true}
stages:
  evaluate: {qos: short, sbatch: {mem_per_gpu: 16384}}
""",
    )
    _, profile = load(path)
    assert profile.constraint == "[a100*2&h100]|(l40s,!old)"
    for params, text in rendered(profile):  # and each renders a script the scheduler would submit
        check_sbatch_script(text, params, params["job_name"])
        assert "#SBATCH --comment='sweep tiny: paper run (é) 50%'" in text and text.endswith(
            "# teardown\necho done"
        )


def test_a_parameter_without_a_rule_of_its_own_is_still_checked(tmp_path, monkeypatch):
    """A submitit parameter added after these rules were written: one line of text or a scalar."""
    from cdhpc.config import profile

    names = profile.sbatch_parameter_names()
    monkeypatch.setattr(profile, "sbatch_parameter_names", lambda: sorted(names + ["future_flag"]))
    path = write_profile(tmp_path, 'sbatch: {future_flag: "x\\n#SBATCH --uid=0"}\n')
    with pytest.raises(
        ConfigError,
        match=r"sbatch.future_flag = 'x\\n#SBATCH --uid=0': has a line break .*; allowed: a "
        "number, true or false, or printable text on one line",
    ):
        load(path)


def test_sweep_values_that_reach_sbatch_are_checked(tmp_path):
    path = write_profile(tmp_path, "partition: debug\n")
    with pytest.raises(ConfigError) as e:
        load(path, f'workdir="{tmp_path}/runs\\n#SBATCH --uid=0"')  # a YAML string with an escaped newline
    assert f"{SWEEP}: workdir = '{tmp_path}/runs\\n#SBATCH --uid=0': has a line break" in str(e.value)
    with pytest.raises(ConfigError, match=r"workdir = .*has %, which SLURM expands in log paths"):
        load(path, f"workdir={tmp_path}/run%j")
    with pytest.raises(ConfigError, match=r"executor.resources.pretrain.mem_gb = inf: .*finite number"):
        load(path, "executor.resources.pretrain.mem_gb=.inf")
    with pytest.raises(ConfigError, match=r"mem_gb = '4\\n#SBATCH --uid=0'"):  # typed by the sweep schema
        load(path, 'executor.resources.pretrain.mem_gb="4\\n#SBATCH --uid=0"')


def test_job_names_take_only_the_job_name_characters():
    assert job_name("tiny-2.b", "evaluate", ["k"], "s").startswith("cdhpc.tiny-2.b.evaluate.")
    for sweep in ("a\nb", "a,b", "a b", "-x", ""):
        with pytest.raises(UnsafeSbatch, match="cannot be part of a SLURM job name"):
            job_name(sweep, "evaluate", ["k"], "s")


# ----------------------------------------------------------------------------- the rendered script
BENIGN = ClusterProfile(
    partition="debug",
    account="lab",
    qos="normal",
    constraint="a100|h100",
    signal_delay_s=30,
    sbatch={
        "comment": "tiny sweep",
        "mail_type": "END,FAIL",
        "additional_parameters": {"reservation": "maint", "overcommit": True},
    },
    stages={"evaluate": StageProfile(qos="short", mem_gb=2, steps_per_job=8)},
)
# the #SBATCH keys the scripts of the BENIGN profile may have, and nothing else
EXPECTED_KEYS = {
    "account",
    "array",
    "comment",
    "constraint",
    "cpus-per-task",
    "dependency",
    "error",
    "job-name",
    "kill-on-invalid-dep",
    "mail-type",
    "mem",
    "nodes",
    "ntasks-per-node",
    "open-mode",
    "output",
    "overcommit",
    "partition",
    "qos",
    "requeue",
    "reservation",
    "signal",
    "time",
    "wckey",
}
SRUN = re.compile(
    r"srun --unbuffered --output /W/logs/\w+/%\S+ --error /W/logs/\w+/%\S+ "
    r"python -u -m submitit\.core\._submit /W/logs/\w+"
)


def rendered(profile: ClusterProfile) -> list[tuple[dict, str]]:
    """(parameters, script) of the first array of every stage of the tiny sweep on `profile`:
    sbatch_parameters and submitit's renderer, as the scheduler calls them before sbatch."""
    cfg = load_config(SWEEP, ["executor=slurm"])
    from cdhpc.config.profile import apply_profile

    plan = plan_sweep(apply_profile(cfg, profile))
    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, profile.max_array_size)
    out = []
    for stage in dict.fromkeys(a.stage for a in arrays):
        a = next(a for a in arrays if a.stage == stage)
        params = sbatch_parameters(
            a, profile, f"cdhpc.tiny.{stage}.0123456789", dependency_string(a.after, {})
        )
        folder = f"/W/logs/{stage}"
        out.append(
            (
                params,
                sbatch_script(params, folder, len(a.packs), f"python -u -m submitit.core._submit {folder}"),
            )
        )
    return out


def test_a_benign_script_has_only_expected_lines():
    """Every line is the shebang, a section comment, an #SBATCH --key[=value] line with an expected
    key (each once, its value one shell word), the setup export, or submitit's own command lines:
    a change that lets a value through to a line of its own fails here."""
    scripts = rendered(BENIGN)
    assert len(scripts) == 8
    for params, text in scripts:
        keys = []
        for line in text.split("\n"):
            if line.startswith("#SBATCH"):
                m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=([A-Za-z0-9_.,:|@%/+-]+|'[^'\n]*'))?", line)
                assert m and m[1] in EXPECTED_KEYS, line
                keys.append(m[1])
            else:
                assert (
                    line
                    in (
                        "#!/bin/bash",
                        "",
                        "# Parameters",
                        "# setup",
                        "# command",
                        "export SUBMITIT_EXECUTOR=slurm",
                    )
                    or re.fullmatch(r"export OMP_NUM_THREADS=\d+", line)
                    or SRUN.fullmatch(line)
                ), line
        assert len(keys) == len(set(keys)), "one line per key"
        assert (
            "#SBATCH --qos=short" in text
            if params["job_name"].split(".")[2] == "evaluate"
            else "#SBATCH --qos=normal" in text
        )
        assert "#SBATCH --comment='tiny sweep'" in text and "#SBATCH --overcommit" in text
        check_sbatch_script(text, params, params["job_name"])


@pytest.mark.parametrize(
    "profile",
    [
        ClusterProfile(partition="debug\n#SBATCH --uid=0"),
        ClusterProfile(sbatch={"comment": "c\ntouch /tmp/x\n: '"}),
        ClusterProfile(sbatch={"additional_parameters": {"mail-type\n#SBATCH --uid": "0"}}),
        ClusterProfile(sbatch={"additional_parameters": {"mail-type": "END\x00"}}),
        ClusterProfile(stages={"pretrain": StageProfile(qos="q\r#SBATCH --uid=0")}),
    ],
    ids=["partition", "comment", "additional key", "NUL", "stage qos"],
)
def test_the_rendered_script_is_refused_when_a_value_slipped_past_the_profile_checks(profile):
    """Profiles built in code skip the load-time checks: the script check still refuses them."""
    params, text = next((p, t) for p, t in rendered(profile) if ".pretrain." in p["job_name"])
    with pytest.raises(
        UnsafeSbatch,
        match=r"refusing to submit cdhpc\.tiny\.pretrain\.0123456789: sbatch parameter .* "
        r"has a line break or control character",
    ):
        check_sbatch_script(text, params, params["job_name"])


def test_a_script_with_a_line_no_parameter_made_is_refused():
    params, text = rendered(BENIGN)[0]
    name = params["job_name"]
    check_sbatch_script(text, params, name)
    for tampered in (
        text.replace("#SBATCH --partition=debug", "#SBATCH --partition=debug\n#SBATCH --uid=0"),
        text.replace("#SBATCH --partition=debug", "#SBATCH --partition=other"),
        text.replace("#SBATCH --qos=normal", "#SBATCH --partition=debug"),
    ):
        with pytest.raises(UnsafeSbatch, match="is not the line of one parameter"):
            check_sbatch_script(tampered, params, name)
    for tampered in (
        text.replace("export SUBMITIT_EXECUTOR=slurm", "export SUBMITIT_EXECUTOR=slurm\ntouch /tmp/x"),
        text.replace("# setup\n", "# setup\ntouch /tmp/x\n"),
        text + "\ntouch /tmp/x",
    ):
        with pytest.raises(UnsafeSbatch, match="a value started a line of its own"):
            check_sbatch_script(tampered, params, name)


# ----------------------------------------------------------------------------- the scheduler
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """Fakes of srun and sbatch on PATH (no SLURM here): sbatch keeps a copy of each script it is
    given and answers like the real one; returns the folder of the copies. The read-only queries
    fail at once, as on a machine without SLURM (a real client with no controller waits for it)."""
    bin_dir, scripts = tmp_path / "fakebin", tmp_path / "sbatch-got"
    bin_dir.mkdir()
    scripts.mkdir()
    for name, body in (
        ("srun", "exit 1"),
        ("scontrol", "exit 1"),
        ("sacctmgr", "exit 1"),
        ("squeue", "exit 1"),
        ("sbatch", f'cp "$1" {scripts}/; echo "Submitted batch job 4242"'),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def one_step_plan() -> Plan:
    res = {
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 1,
        "timeout_min": 5,
        "steps_per_job": 1,
    }
    return Plan([StepSpec("prepare", "data", "0123456789abcdef", {}, {}, {}, res)])


def test_submitit_writes_the_script_that_was_checked(tmp_path, monkeypatch):
    """Through submitit's real SlurmExecutor to a fake sbatch: the script it hands sbatch is the
    one sbatch_script renders (so the check looks at what is submitted) and it passes the check."""
    scripts = fake_slurm(tmp_path, monkeypatch)
    plan = one_step_plan()
    profile = BENIGN.model_copy(update={"submit_interval_s": 0})
    out = SlurmScheduler(tmp_path / "w", profile, "tiny").submit(plan, {plan.steps[0].key}, {}, {})
    assert out.job_ids == ["4242"]
    (got,) = [p.read_text() for p in scripts.iterdir()]
    rec = (tmp_path / "w" / "jobs" / "prepare").glob("*.json")
    name = __import__("json").loads(next(rec).read_text())["job_name"]
    assert f"#SBATCH --job-name={name}" in got and "#SBATCH --comment='tiny sweep'" in got
    folder = tmp_path / "w" / "logs" / "prepare"
    params = sbatch_parameters(plan_arrays(plan, {plan.steps[0].key}, {}, 1000)[0], profile, name, None)
    assert got == sbatch_script(params, folder, 1)
    check_sbatch_script(got, params, name)


def test_the_scheduler_submits_nothing_for_a_hostile_profile(tmp_path, monkeypatch):
    scripts = fake_slurm(tmp_path, monkeypatch)
    plan = one_step_plan()
    hostile = ClusterProfile(sbatch={"comment": "c\ntouch /tmp/x\n: '"}, submit_interval_s=0)
    with pytest.raises(UnsafeSbatch, match=r"sbatch parameter comment = \"c\\ntouch /tmp/x\\n: '\""):
        SlurmScheduler(tmp_path / "w", hostile, "tiny").submit(plan, {plan.steps[0].key}, {}, {})
    assert not list(scripts.iterdir()) and not (tmp_path / "w" / "submitting").exists()
    a = plan_arrays(plan, {plan.steps[0].key}, {}, 1000)[0]  # the last check, in front of sbatch itself
    with pytest.raises(UnsafeSbatch):
        SlurmScheduler(tmp_path / "w", hostile, "tiny")._sbatch(
            a, sbatch_parameters(a, hostile, "cdhpc.t.p.0", None), 1
        )
    assert not list(scripts.iterdir())


def test_submit_sweep_refuses_with_one_error_and_exit_2(tmp_path, monkeypatch, caplog):
    """The launch's SLURM path, to a fake sbatch, with a profile that skipped the load checks."""
    from cdhpc.executors.launch_slurm import submit_sweep

    scripts = fake_slurm(tmp_path, monkeypatch)
    cfg = load_config(SWEEP, ["executor=slurm", f"workdir={tmp_path / 'w'}"])
    (tmp_path / "w").mkdir()  # as the launch's prepare_workdir leaves it
    hostile = ClusterProfile(partition="debug\n#SBATCH --uid=0", submit_interval_s=0)
    assert submit_sweep(cfg, plan_sweep(cfg), tmp_path / "w", hostile) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert (
        error.startswith("refusing to submit cdhpc.tiny.prepare.") and "partition = 'debug\\n#SBATCH" in error
    )
    assert "\n" not in error and not list(scripts.iterdir()) and not (tmp_path / "w" / "jobs").exists()


@pytest.mark.slow
def test_launch_with_a_hostile_profile_exits_2_with_one_error_line_and_writes_nothing(tmp_path):
    write_profile(tmp_path, 'partition: debug\nsbatch: {comment: "c\\ntouch /tmp/x\\n: \'"}\n', name="shared")
    workdir = tmp_path / "w"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(SWEEP),
            "executor=slurm",
            "executor.profile=shared",
            f"workdir={workdir}",
            "--dry-run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    profile = tmp_path / "slurm" / "shared.yaml"
    assert out.stderr.splitlines() == [
        f"invalid cluster profile {profile} (1 error):",
        f'  {profile}:2: sbatch.comment = "c\\ntouch /tmp/x\\n: \'": has a line break (in the sbatch script '
        "it would "
        "end the line and start a new one); allowed: printable text on one line (no line break, tab or other "
        "control "
        "character)",
    ]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not workdir.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["slurm"]

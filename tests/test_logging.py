"""-v/-q and CDHPC_LOG_LEVEL: parsed on every command, passed on to jobs (local and SLURM), and
libraries' INFO lines (DeepSpeed's gcc probes among them) kept out unless -v."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc import cli
from cdhpc.base import verbosity
from cdhpc.base.verbosity import ENV, LogLevelError, configure, resolve_level

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "verbose,quiet,env,want",
    [
        (False, False, {}, "info"),
        (True, False, {}, "debug"),
        (False, True, {}, "error"),
        (False, False, {ENV: "WARNING"}, "warning"),
        (False, True, {ENV: "debug"}, "error"),
        (True, False, {ENV: "error"}, "debug"),
        (False, False, {ENV: " "}, "info"),
    ],
)
def test_flags_win_over_the_variable(verbose, quiet, env, want):
    assert resolve_level(verbose, quiet, env) == want


def test_a_bad_variable_names_itself_the_value_and_the_levels():
    with pytest.raises(LogLevelError) as e:
        resolve_level(True, False, {ENV: "loud"})  # a flag does not hide the typo
    assert str(e.value) == (
        "cdhpc: environment variable CDHPC_LOG_LEVEL='loud' is not a log level; "
        "allowed: debug, info, warning, error (any case)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "nowhere", "--once"],
        ["report", "nowhere"],
        ["-q", "eval", "--help"],
        ["launch", "configs/tiny.yaml", "--dry-run"],
    ],
)
def test_commands_exit_2_on_a_bad_variable_with_one_line(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "CDHPC_LOG_LEVEL='loud'" in err[0]


@pytest.mark.parametrize(
    "argv,verbose,quiet",
    [
        (["status", "w", "-q"], False, True),
        (["-q", "status", "w"], False, True),
        (["status", "w"], False, False),
        (["-v", "cancel", "w", "--stage", "pretrain"], True, False),
        (["export", "-v", "w"], True, False),
    ],
)
def test_every_subcommand_takes_v_and_q_before_or_after_it(argv, verbose, quiet):
    args = cli.build_parser().parse_args(argv)
    assert (getattr(args, "verbose", False), getattr(args, "quiet", False)) == (verbose, quiet)


def test_v_and_q_together_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["status", "w", "-v", "-q"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,want",
    [
        (["-q", "launch", "x.yaml", "a=1"], ("launch", ["x.yaml", "a=1", "-q"], False, False)),
        (["launch", "x.yaml", "-v"], ("launch", ["x.yaml", "-v"], False, False)),
        (
            ["eval", "--model", "m", "-q", "--tasks", "blimp"],
            ("eval", ["--model", "m", "--tasks", "blimp"], False, True),
        ),
        (["-v", "eval", "--help"], ("eval", ["--help"], True, False)),
        (["status", "w"], None),
    ],
)
def test_launch_gets_the_flags_and_eval_has_them_taken_out(argv, want):
    assert cli.split_delegated(argv) == want


def test_launch_parser_takes_q_after_overrides():
    from cdhpc.ui.launch import build_parser

    args = build_parser().parse_intermixed_args(["s.yaml", "a=1", "-q", "b=2"])
    assert args.quiet and not args.verbose and args.overrides == ["a=1", "b=2"]


def test_the_level_reaches_child_processes_through_the_environment():
    env = {"TRANSFORMERS_VERBOSITY": "detail"}  # a user's own setting is kept
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure("error", environ=env)
        assert env == {
            ENV: "error",
            "TRANSFORMERS_VERBOSITY": "detail",
            "DATASETS_VERBOSITY": "error",
            "SUBMITIT_LOG_LEVEL": "ERROR",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        default: dict[str, str] = {}
        configure("info", environ=default)
        assert ENV not in default and default["SUBMITIT_LOG_LEVEL"] == "INFO"  # a job's life stays in its log
        assert default["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # no "Loading weights" bar per model
        debug: dict[str, str] = {}
        configure("debug", environ=debug)
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in debug
    finally:
        root.handlers[:], root.level = handlers, level


def test_slurm_jobs_get_the_level_in_their_script():
    from cdhpc.executors.sbatch import check_sbatch_script, plan_arrays, sbatch_parameters, sbatch_script
    from cdhpc.sweep.plan import plan_sweep
    from tests.test_slurm import tiny_on_dev

    cfg, profile = tiny_on_dev()
    plan = plan_sweep(cfg, "prepare")
    array = plan_arrays(plan, {plan.steps[0].key}, {}, 1000)[0]
    params = sbatch_parameters(array, profile, "cdhpc.tiny.prepare.0123456789", None, "debug")
    script = sbatch_script(params, "/WORKDIR/logs/prepare", 1)
    check_sbatch_script(script, params, "cdhpc.tiny.prepare.0123456789")
    assert "\nexport CDHPC_LOG_LEVEL=debug\n" in script
    assert "CDHPC_LOG_LEVEL" not in sbatch_script(sbatch_parameters(array, profile, "n", None), "/W", 1)


@pytest.mark.parametrize(
    "level,shown",
    [
        ("info", ["own info", "submitit info"]),
        ("error", []),
        ("debug", ["own info", "gcc -c test.c", "submitit info"]),
    ],
)
def test_library_info_lines_only_at_debug(level, shown, monkeypatch):
    """setuptools logs DeepSpeed's compiler probes (`gcc ...`) on the root logger at INFO; submitit's
    records (a job's start, requeue, time-out) are shown as ours are."""
    monkeypatch.setenv(ENV, level)
    buf = io.StringIO()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        verbosity.configure(level, fmt="%(message)s", stream=buf, force=True, environ={})
        logging.getLogger("cdhpc").info("own info")
        logging.getLogger().info("gcc -c test.c")
        logging.getLogger("submitit").info("submitit info")
        logging.getLogger("urllib3").warning("library warning")
    finally:
        root.handlers[:], root.level = handlers, root_level
    want = shown + (["library warning"] if level != "error" else [])
    assert sorted(buf.getvalue().splitlines()) == sorted(want)


def test_a_job_logs_at_the_launchers_level_and_other_ranks_at_warning(monkeypatch):
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        for env, rank, want in (
            ("debug", 0, logging.DEBUG),
            ("debug", 1, logging.WARNING),
            ("", 0, logging.INFO),
            ("nonsense", 0, logging.INFO),
            ("error", 1, logging.ERROR),
        ):
            monkeypatch.setenv(ENV, env)
            verbosity.configure_job("3", rank)
            assert logging.getLogger("cdhpc").level == want
            assert "[array 3]" in root.handlers[0].formatter._fmt and root.handlers[0].stream is sys.stdout
    finally:
        root.handlers[:], root.level = handlers, root_level
        logging.getLogger("cdhpc").setLevel(logging.NOTSET)


def _launch_prepare(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            "configs/tiny.yaml",
            f"workdir={workdir}",
            "--until",
            "prepare",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


@pytest.mark.slow
def test_q_prints_nothing_and_its_job_logs_no_info(tmp_path):
    out = _launch_prepare(tmp_path / "quiet", "-q")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert list((tmp_path / "quiet" / "receipts" / "prepare").glob("*.json"))  # the step ran
    job_logs = "".join(p.read_text() for p in (tmp_path / "quiet" / "logs" / "prepare").glob("*_log.*"))
    assert "INFO" not in job_logs
    loud = _launch_prepare(tmp_path / "loud", env={ENV: "debug"})  # the same, with the variable at debug
    assert loud.returncode == 0 and "steps done" in loud.stderr
    job_logs = "".join(p.read_text() for p in (tmp_path / "loud" / "logs" / "prepare").glob("*_log.out"))
    assert "[INFO] [array -] step prepare/data" in job_logs and "submitit INFO" in job_logs

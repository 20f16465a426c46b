"""The installed ``cdhpc`` console script: every subcommand's --help, launch and eval taking their own
modules' options, usage errors, no torch at start-up, and README's commands accepted as written."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "deepspeed")
# Wide enough that argparse wraps no help line, so one subcommand's help stays on one line.
ENV = {**os.environ, "COLUMNS": "1000"}


def _subcommands() -> dict[str, str]:
    """Each subcommand of the top-level parser and its one-line help."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {c.dest: c.help for c in action._choices_actions}


SUBCOMMANDS = list(_subcommands())


@pytest.fixture(scope="module")
def cdhpc_script() -> str:
    path = shutil.which("cdhpc")
    if path is None:
        pytest.fail("the cdhpc console script is not on PATH; install the package: pip install -e .")
    return path


def _run(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([script, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_subcommand_with_its_help(cdhpc_script):
    out = _run(cdhpc_script, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: cdhpc ")
    for name, text in _subcommands().items():
        assert re.search(rf"^\s+{name}\s+{re.escape(text)}$", out.stdout, re.M), (name, out.stdout)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_answers_with_its_usage(capsys, command):
    """In this process (the console script itself is run by the test above and by the slow ones)."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert out.out.startswith(f"usage: cdhpc {command} "), out.out[:200]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "module", "prog"),
    [("launch", "cdhpc.launch", "python -m cdhpc.launch"), ("eval", "cdhpc.evals.run", "cdhpc eval")],
    ids=["launch", "eval"],
)
def test_launch_and_eval_help_are_their_modules_own(cdhpc_script, command, module, prog):
    """`cdhpc launch`/`cdhpc eval` take exactly the options of `python -m <module>` (whitespace aside:
    usage lines wrap by the length of the program's name)."""
    ours = _run(cdhpc_script, command, "--help")
    theirs = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert " ".join(ours.stdout.split()) == " ".join(
        theirs.stdout.replace(f"usage: {prog}", f"usage: cdhpc {command}").split()
    )
    if command == "launch":
        assert "--dry-run" in ours.stdout


def test_help_imports_no_torch():
    """--help of the top level and of every subcommand stays off torch, transformers and deepspeed."""
    code = f"""
import sys
from cdhpc.cli import main
for argv in [["--help"]] + [[c, "--help"] for c in {SUBCOMMANDS!r}]:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
loaded = [m for m in {HEAVY!r} if m in sys.modules]
assert not loaded, loaded
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_eval_options_reach_the_eval_code(cdhpc_script, tmp_path):
    """README's eval command: --model etc. go to main_eval, which rejects the missing data directory."""
    model, data, out_dir = tmp_path / "no-model", tmp_path / "no-data", tmp_path / "out"
    out = _run(
        cdhpc_script,
        "eval",
        "--model",
        str(model),
        "--tasks",
        "blimp",
        "--data",
        str(data),
        "--out",
        str(out_dir),
    )
    assert out.returncode == 2
    assert "unrecognized arguments" not in out.stderr
    assert out.stderr.startswith("cdhpc eval: error: ") and str(data) in out.stderr, out.stderr
    assert not out_dir.exists()


def test_launch_dry_run_prints_the_plan_and_writes_nothing(cdhpc_script, tmp_path):
    workdir = tmp_path / "work"
    out = _run(cdhpc_script, "launch", "configs/tiny.yaml", "--dry-run", f"workdir={workdir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep tiny: plan until aggregate" in out.stdout
    assert f"workdir {workdir} does not exist yet" in out.stdout
    assert not workdir.exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nosuch"],
        ["status"],
        ["cancel", "w", "--stage", "nosuch"],
        ["launch"],
        ["launch", "configs/tiny.yaml", "--nosuch"],
        ["eval", "--tasks", "blimp"],
        ["eval", "--model", "m", "--tasks", "b", "--out", "o", "x"],
    ],
    ids=lambda argv: " ".join(argv) or "none",
)
def test_usage_errors_exit_2_with_one_error_line(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    prog = "cdhpc " + argv[0] if argv and argv[0] in ("launch", "eval", "status", "cancel") else "cdhpc"
    assert last.startswith(f"{prog}: error: "), last


def _readme_commands() -> list[str]:
    """The command lines of README's "## Using it" bash block."""
    section = (ROOT / "README.md").read_text().split("\n## Using it\n", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _parse(argv: list[str]) -> argparse.Namespace:
    """argv parsed as `cdhpc` would parse it, without running the handler."""
    if argv[0] == "launch":
        from cdhpc.ui.launch import build_parser as launch_parser

        return launch_parser("cdhpc launch").parse_intermixed_args(argv[1:])
    if argv[0] == "eval":
        from cdhpc.evals.run import _parser as eval_parser

        return eval_parser().parse_args(argv[1:])
    return build_parser().parse_args(argv)


def test_readme_commands_parse(tmp_path):
    """Every command of README's "Using it" block is accepted by the parser it reaches, with its
    paths replaced by ones under tmp_path. Parsing only: some of them train or submit to SLURM."""
    paths = {word: str(tmp_path / word.replace("/", "-")) for word in ("runs/tiny", "DIR", "EVAL_DIR", "OUT")}
    commands = _readme_commands()
    assert len(commands) >= 10, commands
    for line in commands:
        words = [paths.get(w, w) for w in shlex.split(line, comments=True)]
        while re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # an environment assignment before the command
            words = words[1:]
        if words[:3] == ["python", "-m", "cdhpc.launch"]:
            argv = ["launch", *words[3:]]
        else:
            assert words[0] == "cdhpc", f"README command neither cdhpc nor python -m cdhpc.launch: {line}"
            argv = words[1:]
        assert argv[0] in SUBCOMMANDS, line
        try:
            _parse(argv)
        except SystemExit as e:
            pytest.fail(f"README command does not parse (exit {e.code}): {line}")

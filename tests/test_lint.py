"""The repository is formatted and linted as pyproject.toml's [tool.ruff] says (line length 110;
pycodestyle, pyflakes, import order, bugbear, pyupgrade): `ruff format` and `ruff check` leave it
unchanged. Fix a failure with `ruff format . && ruff check --fix .` (ruff is in the dev extra)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ruff() -> str:
    path = shutil.which("ruff")
    assert path, "ruff is not installed: pip install -c constraints.txt -e '.[dev]'"
    return path


def test_the_code_is_formatted(ruff):
    out = subprocess.run(
        [ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_linter_finds_nothing(ruff):
    out = subprocess.run(
        [ruff, "check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr

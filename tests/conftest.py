import os

# Small ops on 2 cores slow down 5-10x without this (DESIGN.md, Facts).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_local(tmp_path_factory):
    """The tiny sweep run once per session with the local executor: (workdir, completed launch).
    The end-to-end tests inspect it and the SLURM tests compare their results with it."""
    workdir = tmp_path_factory.mktemp("tiny") / "work"
    out = subprocess.run([sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out

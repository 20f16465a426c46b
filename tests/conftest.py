import os

# Small ops on 2 cores slow down 5-10x without this (docs/design.md §10).
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
    # umask 022 explicitly: tests/test_permissions.py checks the group and others can read every file
    out = subprocess.run([sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500, preexec_fn=lambda: os.umask(0o022))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out


LOG_ENV = ("CDHPC_LOG_LEVEL", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "SUBMITIT_LOG_LEVEL")


@pytest.fixture(autouse=True)
def _restore_log_env():
    """A command run in-process passes its log level on through os.environ (cdhpc.verbosity);
    keep one test's -v or -q from reaching the next."""
    saved = {k: os.environ.get(k) for k in LOG_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

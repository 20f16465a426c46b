"""The one-node dev cluster (slurm/dev-cluster/start.sh), used for real through submitit.

Selected with ``-m slurm``; skipped where SLURM's client commands are not installed. Every wait
is bounded (``WAIT_S``), so a broken cluster fails a test instead of hanging it. The jobs' own
functions live in this module, which is pickled by value because the compute "node" imports
modules from the submission directory, not from ``tests/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest

from waits import wait_until

submitit = pytest.importorskip("submitit")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sinfo") is None,
        reason="SLURM client commands (sinfo) not installed; start slurm/dev-cluster/start.sh",
    ),
]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT_S = 60.0  # bound on every wait for a job or an accounting record, in seconds
POLL_S = 0.5


def _run(*cmd: str) -> str:
    """Run a SLURM client command (10 s bound) and return its stdout; raise with its stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _wait_until(what: str, check: Callable[[], object], timeout_s: float = WAIT_S) -> object:
    return wait_until(what, check, timeout_s, POLL_S)


def _sacct_state(job_id: str) -> str:
    """The job's state in the accounting database ('' while slurmdbd has no record yet)."""
    out = _run("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", job_id)
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return states.get(job_id, "")


def _squeue_field(job_id: str, fmt: str) -> str:
    """One squeue field (``%T`` state, ``%r`` reason) of a job, '' when squeue does not list it."""
    return _run("squeue", "-h", "-t", "all", "-j", job_id, "-o", fmt).strip()


def _wait_done(jobs: list, timeout_s: float = WAIT_S) -> None:
    """Bounded replacement for ``job.wait()`` (which waits forever)."""
    ids = [j.job_id for j in jobs]
    _wait_until(f"jobs {ids} to finish", lambda: all(j.done() for j in jobs), timeout_s)


def _after_ok(job) -> dict[str, str]:
    """submitit's way to add ``--dependency=afterok:ID``: an sbatch parameter of the executor."""
    return {"dependency": f"afterok:{job.job_id}"}


@pytest.fixture(scope="module")
def cluster() -> str:
    """The node's state; fails (not skips) when sinfo exists but the controller does not answer."""
    try:
        states = _run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T").split()  # a line per partition
        state = states[0] if states else ""
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        pytest.fail(
            f"sinfo is installed but the cluster does not answer ({err}); run slurm/dev-cluster/start.sh"
        )
    if state not in {"idle", "mixed", "allocated", "completing"}:
        pytest.fail(
            f"node localhost is {state!r}, not up; see /var/log/slurm/slurmd.log "
            "and run slurm/dev-cluster/start.sh"
        )
    return state


@pytest.fixture(scope="module")
def accounting(cluster: str) -> None:
    """Skip when accounting is off on purpose (CDHPC_SLURM_NO_ACCOUNTING=1 start.sh); a slurmdbd
    that is configured but does not answer is a failure, not a skip."""
    cmd = ["sacct", "-n", "-X", "-j", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if "accounting storage is disabled" in done.stderr:
        pytest.skip(
            "accounting storage is disabled in slurm.conf; run start.sh without "
            "CDHPC_SLURM_NO_ACCOUNTING=1 to test sacct"
        )
    if done.returncode != 0:
        pytest.fail(f"sacct fails: {done.stderr.strip()}; is slurmdbd up? run slurm/dev-cluster/start.sh")


@pytest.fixture
def executor(cluster: str, tmp_path: Path) -> submitit.AutoExecutor:
    """A submitit executor on the dev cluster: 1 CPU, 256 MB, 5 min, partition debug."""
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=0.25, slurm_partition="debug")
    return ex


def square_with_index(x: int) -> tuple[int, int]:
    """In a job: x squared and the SLURM array index this element ran as."""
    return x * x, int(submitit.JobEnvironment().array_task_id)


def write_marker(path: str, sleep_s: float) -> float:
    """In a job: sleep, then write ``path``; return the time it was written (epoch s)."""
    time.sleep(sleep_s)
    Path(path).write_text("first job done\n")
    return time.time()


def read_marker(path: str) -> tuple[float, str]:
    """In a job: when it started (epoch s) and what ``path`` held at that moment."""
    started = time.time()
    return started, Path(path).read_text() if Path(path).exists() else ""


def fail_now() -> None:
    """In a job: fail, so that an afterok dependency on it can never be satisfied."""
    raise ValueError("this job fails on purpose")


def test_array_returns_values_per_index(executor) -> None:
    jobs = executor.map_array(square_with_index, [3, 4])
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1, "map_array must submit one job array"
    _wait_done(jobs)
    assert [j.result() for j in jobs] == [(9, 0), (16, 1)]


def test_afterok_second_job_starts_after_first_succeeded(executor, tmp_path: Path) -> None:
    marker = str(tmp_path / "marker.txt")
    first = executor.submit(write_marker, marker, 3.0)
    executor.update_parameters(slurm_additional_parameters=_after_ok(first))
    second = executor.submit(read_marker, marker)
    _wait_until(
        f"job {second.job_id} pending on its dependency",
        lambda: _squeue_field(second.job_id, "%T %r") in {"PENDING Dependency", "RUNNING None"},
    )
    _wait_done([first, second])
    written_at = first.result()
    started_at, seen = second.result()
    assert seen == "first job done\n"
    assert started_at >= written_at


def test_afterok_on_failed_job_never_starts(executor) -> None:
    first = executor.submit(fail_now)
    executor.update_parameters(slurm_additional_parameters=_after_ok(first))
    second = executor.submit(read_marker, "/nonexistent")
    try:
        _wait_done([first])
        with pytest.raises(submitit.core.utils.FailedJobError, match="fails on purpose"):
            first.result()
        _wait_until(
            f"DependencyNeverSatisfied for {second.job_id}",
            lambda: _squeue_field(second.job_id, "%T %r") == "PENDING DependencyNeverSatisfied",
        )
        assert _squeue_field(first.job_id, "%T") == "FAILED"
    finally:
        second.cancel(check=False)


def test_sacct_and_submitit_see_completed(executor, accounting) -> None:
    job = executor.submit(pow, 2, 10)
    array = executor.map_array(pow, [2, 3], [3, 3])
    _wait_done([job, *array])
    assert [job.result(), *(j.result() for j in array)] == [1024, 8, 27]
    for done in [job, *array]:
        _wait_until(
            f"sacct COMPLETED for {done.job_id}", lambda done=done: _sacct_state(done.job_id) == "COMPLETED"
        )
        assert done.watcher.get_state(done.job_id, mode="force") == "COMPLETED"


def test_scancel_of_sleeping_job_is_cancelled_in_sacct(executor, accounting) -> None:
    job = executor.submit(time.sleep, 600)
    try:
        _wait_until(f"job {job.job_id} running", lambda: _squeue_field(job.job_id, "%T") == "RUNNING")
        job.cancel(check=True)
        # sacct writes "CANCELLED by 0"; 30 s bounds KillWait (5 s) plus the record reaching slurmdbd
        _wait_until(
            f"sacct CANCELLED for {job.job_id}",
            lambda: _sacct_state(job.job_id).startswith("CANCELLED"),
            timeout_s=30.0,
        )
        _wait_until(f"submitit to see {job.job_id} done", lambda: job.done(force_check=True), 30.0)
        assert job.state.startswith("CANCELLED")
    finally:
        job.cancel(check=False)  # no-op once cancelled; never leave a 600 s sleeper behind

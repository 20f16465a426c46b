import os

# Small ops on 2 cores slow down 5-10x without this (docs/design.md §10).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# pytest keeps each test module with its asserts rewritten in tests/__pycache__ (git ignores every
# __pycache__) and reads it back on the next run; with PYTHONDONTWRITEBYTECODE set (this machine
# sets it) every worker would rewrite the 70 modules on every run, ~3.5 s each. Python's default
# again, in this process only: the jobs and commands the tests start keep the environment's setting.
sys.dont_write_bytecode = False


def shared_paths(tmp_path_factory, worker_id, name: str) -> tuple[Path, Path, Path]:
    """(workdir, launch record, lock file) of a sweep the session runs once. Under pytest-xdist the
    workers share them (one directory above each worker's own)."""
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    (root / name).mkdir(exist_ok=True)
    return root / name / "work", root / name / "launch.json", root / name / "lock"


def tiny_paths(tmp_path_factory, worker_id) -> tuple[Path, Path, Path]:
    return shared_paths(tmp_path_factory, worker_id, "tiny")


def launch_once(record: Path, lock_path: Path, launch) -> subprocess.CompletedProcess:
    """`launch()`'s CompletedProcess, called by the first worker that gets here; the others wait
    on the lock and read the launch it recorded (a session fixture runs once per xdist worker)."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
        if not record.is_file():
            out = launch()
            tmp = record.with_suffix(".tmp")
            fields = {
                "args": out.args,
                "returncode": out.returncode,
                "stdout": out.stdout,
                "stderr": out.stderr,
            }
            tmp.write_text(json.dumps(fields))
            tmp.rename(record)
    return subprocess.CompletedProcess(**json.loads(record.read_text()))


# The tiny sweep is the longest chain of a full run (about half of its CPU time, stage after stage):
# the workers run at a lower priority (niceness +10) and the sweep at theirs minus 10, so it gets the
# CPU first and the other tests fill in around it. Lowering a niceness takes root (as in CI); without
# it the sweep shares the CPU equally. The fast layer alone is not affected.
WORKER_NICE = 10


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker
        os.nice(WORKER_NICE)
    # A shell starts a background command (`pytest ... &`, nohup) with SIGINT ignored, and every
    # process it starts inherits that: the tests that stop a launcher or a job with SIGINT (Ctrl-C,
    # `cdhpc cancel` of a local job) would see it ignored. Tests start their processes as from a
    # terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _tiny_process() -> None:
    os.umask(0o022)  # explicitly: tests/test_permissions.py checks the group and others can read every file
    if os.nice(0) >= WORKER_NICE:  # started by a worker: back to the niceness the session started with
        try:
            os.nice(-WORKER_NICE)
        except PermissionError:
            pass


def run_tiny(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        preexec_fn=_tiny_process,
    )


@pytest.fixture(scope="session")
def tiny_local(tmp_path_factory, worker_id):
    """The tiny sweep run once per session with the local executor: (workdir, completed launch).
    The end-to-end tests inspect it and the SLURM tests compare their results with it.
    Under pytest-xdist a session fixture runs once per worker: the workers share one directory
    and a lock, the first runs the sweep and records its launch, the others wait and read it."""
    workdir, record, lock_path = tiny_paths(tmp_path_factory, worker_id)

    def launch() -> subprocess.CompletedProcess:
        out = run_tiny(workdir)
        if (workdir / "receipts").is_dir():  # as the sweep left them: other tests rerun steps of it
            shutil.copytree(workdir / "receipts", tiny_receipts(workdir))
        return out

    out = launch_once(record, lock_path, launch)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out


@pytest.fixture(scope="session")
def small_sweep_reference(tmp_path_factory, worker_id) -> Path:
    """The workdir of tests/smallsweep.py's sweep run once, uninterrupted, to its generate step:
    the bytes the kill-and-resume tests must end with. Shared by the workers as the tiny sweep is
    (the first runs it, the others wait); read it, copy it to change it."""
    from smallsweep import write_sweep

    workdir, record, lock_path = shared_paths(tmp_path_factory, worker_id, "small")

    def launch() -> subprocess.CompletedProcess:
        sweep = write_sweep(workdir.parent, workdir.name)
        args = [sys.executable, "-m", "cdhpc.launch", str(sweep), "--until", "generate"]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)

    out = launch_once(record, lock_path, launch)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_local_pretrained(tmp_path_factory, worker_id, request) -> Path:
    """The tiny sweep's workdir once its steps up to pretrain (`--until pretrain`: data, tokenizer
    and the four runs before retraining) are done, without waiting for the rest: the SLURM tests
    start from these outputs instead of training the same models again. While another worker runs
    the sweep, its receipts are awaited; when none does, this runs the sweep `--until pretrain`
    (the whole sweep, when a test asks for it, then resumes from there)."""
    from cdhpc.config import load_config
    from cdhpc.sweep.plan import plan_sweep
    from cdhpc.sweep.receipts import ReceiptError, read_receipt, receipt_path

    workdir, record, lock_path = tiny_paths(tmp_path_factory, worker_id)
    steps = plan_sweep(load_config(ROOT / "configs" / "tiny.yaml", [f"workdir={workdir}"]), "pretrain").steps

    def done() -> bool:
        try:
            return all(
                read_receipt(receipt_path(workdir, s.stage, s.name, s.key)).status == "ok" for s in steps
            )
        except ReceiptError:
            return False

    deadline = time.monotonic() + 1500
    while not done():
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another worker runs the sweep: wait for its pretrain receipts
                assert time.monotonic() < deadline, "the tiny sweep's pretrain steps did not finish in 25 min"
                time.sleep(2)
                continue
            if not record.is_file():
                out = run_tiny(workdir, "--until", "pretrain")
                assert out.returncode == 0, out.stderr[-3000:]
                continue
        request.getfixturevalue("tiny_local")  # the whole sweep ran without these steps: its error
        pytest.fail(f"the tiny sweep in {workdir} ended without its pretrain steps")
    return workdir


def tiny_receipts(workdir: Path) -> Path:
    return workdir.parent / "receipts-at-end"


@pytest.fixture(scope="session")
def tiny_local_receipts(tiny_local) -> Path:
    """A copy of the tiny sweep's receipts taken when it finished: tests of the tiny group rerun
    some of its steps (a deleted shard, a rebuilt manifest), and a rerun step has no receipt for
    a moment."""
    return tiny_receipts(tiny_local[0])


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """pytest-xdist's worker id ("gw0", ...), or "master" without xdist (xdist defines the same fixture)."""
    workerinput = getattr(request.config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "master"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Groups for `--dist loadgroup`: the SLURM tests share one cluster and some reconfigure it
    (slurmdbd stopped, a QOS added), so they run one after the other on one worker; the other tests
    of the tiny sweep change its workdir (a shard deleted, the manifest rebuilt) or need it unchanged."""
    fast_layer = "not slow" in config.option.markexpr  # pyproject's addopts: -m 'not slow and ...'
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif "tiny_local" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("tiny"))
        elif fast_layer and item.module.__name__ in TORCH:
            item.add_marker(pytest.mark.xdist_group("torch"))
    # The SLURM test that compares with the tiny sweep runs last in its group: meanwhile the other
    # worker runs the tiny sweep, so the SLURM worker does not sit waiting on it. A module's tests
    # stay together (their module-scoped fixture, a SLURM sweep, is built once).
    slots = [i for i, item in enumerate(items) if item.get_closest_marker("slurm")]
    modules = list(dict.fromkeys(items[i].module.__name__ for i in slots))
    waits = {items[i].module.__name__ for i in slots if "tiny_local" in items[i].fixturenames}
    rank = {m: (m in waits, n) for n, m in enumerate(modules)}
    ordered = sorted(
        (items[i] for i in slots), key=lambda it: (rank[it.module.__name__], "tiny_local" in it.fixturenames)
    )
    for i, item in zip(slots, ordered):
        items[i] = item


# The fast layer's modules that use torch (and most of them transformers' Llama: ~5 s of imports in
# a process) go together to one worker, so that the other one never imports them; the full run (CI)
# has slow tests in these modules, and every worker imports both anyway.
TORCH = {
    "test_bf16_cpu",
    "test_data",
    "test_decoding",
    "test_evalcache",
    "test_evals",
    "test_sampler",
    "test_train",
}

# The heavy groups start first, one per worker; then the longest modules (a minute or more each in
# CI), so that none of them is left for the end; the rest fills in around them.
FIRST = ("slurm", "tiny", "torch")
LONG = (
    "tests/test_resume.py",
    "tests/test_rerun_clean.py",
    "tests/test_signals.py",
    "tests/test_metrics.py",
    "tests/test_official_golden.py",
    "tests/test_train.py",
    "tests/test_tui.py",
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it installed, never called
def pytest_xdist_make_scheduler(config, log):
    """`-n 2 --dist loadgroup` (CI): tests marked xdist_group("tiny") (they read or change the tiny
    sweep's workdir) run on one worker, one after the other; every other test module goes whole to
    one worker, so its module-scoped fixtures (a SLURM sweep, a toy corpus) are built once."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupOrModule(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)  # the group after "@", or the node id itself
            return scope if scope != nodeid else nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(FIRST + LONG):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return GroupOrModule(config, log)


LOG_ENV = ("CDHPC_LOG_LEVEL", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "SUBMITIT_LOG_LEVEL")


@pytest.fixture(autouse=True)
def _restore_log_env():
    """A command run in-process passes its log level on through os.environ (cdhpc.base.verbosity);
    keep one test's -v or -q from reaching the next."""
    saved = {k: os.environ.get(k) for k in LOG_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

"""The workdir lock: one launcher per workdir; a second launcher exits 2 naming the first and writes
nothing; a lock left by a killed launcher is taken over; --dry-run, --print-config and status need
no lock; expected failures (lock held, read-only workdir) are one line, with a traceback only on -v.

The lock holder here is a fake launcher (a process that takes the lock through cdhpc.sweep.lock and
waits), except in the slow test, which starts two real launchers 0.3 s apart."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdhpc.sweep.lock import (
    LOCK_FILE,
    LockHolder,
    WorkdirBusy,
    WorkdirLock,
    busy_message,
    error_line,
    holds,
    parse_holder,
)

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys
from cdhpc.sweep.lock import WorkdirLock
with WorkdirLock(sys.argv[1], "python -m cdhpc.launch"):
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes stdin (or kills this process)
"""


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its size, mtime and content hash: equal trees, nothing written."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def hold():
    """hold(workdir) -> the fake launcher's Popen, once it holds the workdir's lock."""
    procs = []

    def start(workdir: Path) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(workdir)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=30)


def _run(*argv: str, module: str = "cdhpc") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _recorded(workdir: Path) -> LockHolder:
    holder = parse_holder((workdir / LOCK_FILE).read_text())
    assert holder is not None
    return holder


def test_record_message_and_error_lines_known_answers(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        holder = parse_holder(
            '{"host": "login1", "pid": 4242, "since": 0, "command": "python -m cdhpc.launch"}\n'
        )
        assert holder == LockHolder("login1", 4242, 0.0, "python -m cdhpc.launch")
        assert busy_message(Path("/runs/tiny"), holder) == (
            "cdhpc: /runs/tiny is in use by pid 4242 on login1 since 1970-01-01 00:00:00 (python -m "
            "cdhpc.launch); "
            "wait for it or stop it"
        )
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert parse_holder("") is None and parse_holder("not json") is None and parse_holder("[1]") is None
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/tiny/plan.json")
    assert error_line(full) == (
        "cdhpc: /runs/tiny/plan.json: No space left on device; the disk is full: free space, "
        "then run the same command again (re-running is safe)"
    )
    assert "quota" in error_line(OSError(errno.EDQUOT, "Disk quota exceeded", "/x"))
    assert "read-only" in error_line(OSError(errno.EROFS, "Read-only file system", "/x/.lock"))
    assert error_line(ValueError("a bug")) is None and error_line(FileNotFoundError(2, "gone", "/x")) is None


@pytest.mark.slow
@pytest.mark.parametrize("workdir_state", ["new", "this sweep's"])
def test_second_launcher_exits_2_names_the_first_and_writes_nothing(tmp_path, hold, workdir_state):
    workdir = tmp_path / "work"
    workdir.mkdir()
    if workdir_state != "new":
        (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "tiny"}))
    first = hold(workdir)
    holder = _recorded(workdir)
    assert (holder.pid, holder.host) == (first.pid, os.uname().nodename)
    before = tree(workdir)
    out = _run("configs/tiny.yaml", f"workdir={workdir}", module="cdhpc.launch")
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [busy_message(workdir, holder)]
    assert (
        f"in use by pid {first.pid} on " in out.stderr
        and "(python -m cdhpc.launch); wait for it or stop it" in out.stderr
    )
    assert tree(workdir) == before


@pytest.mark.slow
def test_lock_takers_refuse_and_read_only_commands_run_while_it_is_held(tmp_path, hold, capsys, monkeypatch):
    """manifest rebuild and retry (its child launcher) exit 2 with the line; --dry-run and
    --print-config work and write nothing (in this process, to keep the test fast)."""
    from cdhpc import cli
    from cdhpc.sweep.manifest import Manifest
    from cdhpc.ui import launch

    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "tiny"}))
    shutil.copy(ROOT / "configs" / "tiny.yaml", workdir / "sweep.resolved.yaml")
    Manifest(workdir).close()  # an (empty) manifest: --dry-run reads an in-memory copy of it
    hold(workdir)
    line = busy_message(workdir, _recorded(workdir))
    before = tree(workdir)
    out = _run("retry", str(workdir))
    assert (out.returncode, out.stderr.splitlines()) == (2, [line])
    capsys.readouterr()
    assert cli.main(["manifest", "rebuild", str(workdir)]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert launch.main(["configs/tiny.yaml", f"workdir={workdir}", "--dry-run"]) == 0
    assert "sweep tiny: plan until aggregate" in capsys.readouterr().out
    assert launch.main(["configs/tiny.yaml", f"workdir={workdir}", "--print-config"]) == 0
    assert "name: tiny" in capsys.readouterr().out
    assert tree(workdir) == before


def test_status_once_runs_while_a_launcher_holds_the_lock(tmp_path, hold, capsys):
    from cdhpc import cli
    from cdhpc.benchmarks.status import build_workdir

    workdir = tmp_path / "sweep"
    build_workdir(workdir, 40)
    hold(workdir)
    assert cli.main(["status", str(workdir), "--once"]) == 1  # the synthetic failures
    out = capsys.readouterr()
    assert "failed step(s)" in out.out and out.err == ""


def test_lock_of_a_killed_launcher_is_taken_over(tmp_path, hold, caplog):
    first = hold(tmp_path)
    with pytest.raises(WorkdirBusy, match=f"in use by pid {first.pid} "):
        WorkdirLock(tmp_path).acquire()
    first.send_signal(signal.SIGKILL)  # no clean-up: the file still names it, the kernel dropped the flock
    first.wait(timeout=30)
    assert _recorded(tmp_path).pid == first.pid
    with caplog.at_level(logging.INFO, logger="cdhpc"):
        with WorkdirLock(tmp_path, "cdhpc manifest rebuild") as lock:
            assert holds(tmp_path) and _recorded(tmp_path).pid == os.getpid()
            assert _recorded(tmp_path).command == "cdhpc manifest rebuild"
            with WorkdirLock(tmp_path):  # re-entrant in one process (a launcher healing its manifest)
                pass
            assert holds(tmp_path) and lock.path == tmp_path.resolve() / LOCK_FILE
    assert not holds(tmp_path) and (tmp_path / LOCK_FILE).read_text() == ""  # a clean release empties it
    assert caplog.text.count("taking over") == 1
    assert f"taking over {tmp_path.resolve() / LOCK_FILE}, left by pid {first.pid}" in caplog.text
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cdhpc.sweep.lock import WorkdirLock; "
            "WorkdirLock(sys.argv[1]).acquire(); print('ok')",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.stdout.strip() == "ok", other.stderr  # released: another process takes it


def read_only_run(workdir: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`argv` run with `workdir` bind-mounted read-only over itself in a private mount namespace
    (writes fail with EROFS even for root, unlike chmod). Skips where that is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a read-only bind mount")
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; '
        'touch "$1/.probe" 2>/dev/null && exit 98; shift; exec "$@"'
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(workdir), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode == 97 or "unshare failed" in out.stderr:
        pytest.skip(
            f"no read-only bind mount here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()[-200:]}"
        )
    assert out.returncode != 98, "the bind mount is writable"
    return out


@pytest.mark.slow
def test_launcher_and_rebuild_on_a_read_only_workdir_say_so_in_one_line(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "cdhpc.json").write_text(json.dumps({"sweep": "tiny"}))
    launch = [sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}"]
    out = read_only_run(workdir, launch)
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == [
        f"cdhpc: {workdir / LOCK_FILE}: Read-only file system; the filesystem is read-only: "
        "use a writable copy of the workdir (cdhpc status and report work read-only)"
    ]
    out = read_only_run(workdir, [sys.executable, "-m", "cdhpc", "manifest", "rebuild", str(workdir)])
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and "Read-only file system" in out.stderr
    out = read_only_run(workdir, launch + ["-v"])
    assert out.returncode == 1 and "Traceback" in out.stderr and "OSError: [Errno 30]" in out.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["cdhpc.json"]


@pytest.mark.slow
def test_launcher_on_a_full_disk_says_so_in_one_line(tmp_path):
    """A 64 KiB tmpfs (mounted in a private mount namespace) fills up while plan.json is written."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" || exit 97; shift; exec "$@"'
    argv = [sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={tmp_path}/work"]
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode == 97 or "unshare failed" in out.stderr:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()[-200:]}")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"cdhpc: {tmp_path}/work: No space left on device; the disk is full: free space, "
        "then run the same command again (re-running is safe)"
    ]


@pytest.mark.slow
def test_two_real_launchers_started_together_run_each_step_once(tmp_path):
    """The issue's case: two launchers 0.3 s apart on one workdir. One runs the sweep, the other
    exits 2 at once naming it; every step ran once and no stray part file is left."""
    workdir = tmp_path / "work"
    argv = [
        sys.executable,
        "-m",
        "cdhpc.launch",
        "configs/tiny.yaml",
        f"workdir={workdir}",
        "--until",
        "tokenizer",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    time.sleep(0.3)
    second = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    results = [(p.wait(timeout=900), *p.communicate()) for p in (first, second)]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    (_, _, err_ok), (_, _, err_busy) = sorted(results)
    assert (
        len(err_busy.splitlines()) == 1
        and "is in use by pid " in err_busy
        and "wait for it or stop it" in err_busy
    )
    assert "steps done" in err_ok
    jobs = sorted(p.name for p in (workdir / "jobs").rglob("*.json"))
    receipts = sorted(p.name for p in (workdir / "receipts").rglob("*.json"))
    assert len(jobs) == len(receipts) == 2  # prepare and tokenizer, once each
    for job in (workdir / "jobs").rglob("*.json"):
        assert json.loads(job.read_text())["attempt"] == 1
    stray = [p for p in workdir.rglob("*") if p.name.endswith((".tmp", ".part")) or ".part" in p.name]
    assert not stray

"""One launcher per workdir, and the one-line answers to a workdir that cannot be used.

The lock is an advisory ``flock(LOCK_EX | LOCK_NB)`` on ``workdir/.lock`` (local disks; NFS with
lockd, where Linux maps flock to POSIX locks). The kernel releases it when its process dies, so a
lock file left behind by a killed launcher is simply taken over and overwritten. Once the lock is
held, the file records who holds it (JSON: host, pid, since, command), so a second launcher can
say who is in the way; a clean release empties it. The file is never deleted: a process that
opened it just before a deletion would lock an orphaned inode while a third locks a new file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdhpc.sweep.workdir import LOCK_FILE, Workdir  # noqa: F401 (LOCK_FILE re-exported)

log = logging.getLogger("cdhpc")

_HELD: dict[str, WorkdirLock] = {}  # resolved workdir -> the lock this process holds on it


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a workdir's lock, as its lock file records it."""

    host: str
    pid: int
    since: float  # unix time the lock was taken (s)
    command: str  # e.g. "python -m cdhpc.launch"

    def dead_here(self) -> bool:
        """The holder ran on this host and its pid no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


def parse_holder(text: str) -> LockHolder | None:
    """Pure: the holder a lock file records, or None for an empty or foreign file."""
    try:
        d = json.loads(text)
        return LockHolder(str(d["host"]), int(d["pid"]), float(d["since"]), str(d.get("command") or "cdhpc"))
    except (ValueError, KeyError, TypeError):
        return None


def busy_message(workdir: Path, holder: LockHolder | None) -> str:
    """Pure (up to the local time zone): the one line a second launcher prints."""
    if holder is None:
        lock = Workdir(workdir).lock
        return f"cdhpc: {workdir} is in use by another process (it holds {lock}); wait for it or stop it"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
    return (
        f"cdhpc: {workdir} is in use by pid {holder.pid} on {holder.host} since {since} ({holder.command}); "
        "wait for it or stop it"
    )


class WorkdirError(Exception):
    """A workdir file is missing or not what cdhpc writes; the message is one line naming it and the fix."""


class WorkdirBusy(Exception):
    """Another process holds the workdir's lock (exit 2)."""

    def __init__(self, workdir: Path, holder: LockHolder | None):
        super().__init__(busy_message(workdir, holder))
        self.workdir, self.holder = workdir, holder


class WorkdirLock:
    """The exclusive lock on an existing workdir, held from `acquire` (or `with`) to `release`.
    Raises WorkdirBusy when another process holds it and OSError when the lock file cannot be
    opened (read-only filesystem, no permission). Re-entrant within one process."""

    def __init__(self, workdir: str | Path, command: str = "python -m cdhpc.launch"):
        self.workdir = Path(workdir).resolve()
        self.path = Workdir(self.workdir).lock
        self.command = command
        self._fd: int | None = None
        self._outer: WorkdirLock | None = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> WorkdirLock:
        held = _HELD.get(str(self.workdir))
        if held is not None:  # this process already holds it (e.g. a launcher healing its manifest)
            self._outer = held
            return self
        fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
        )  # umask decides; jobs never inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _wait_for_record(fd)
            os.close(fd)
            raise WorkdirBusy(self.workdir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            old = parse_holder(_read(fd))
            if old is not None:  # a clean release empties the file: its holder was killed
                log.info(
                    "cdhpc: taking over %s, left by pid %d on %s (%s), which ended without releasing it",
                    self.path,
                    old.pid,
                    old.host,
                    old.command,
                )
            record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "command": self.command,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD[str(self.workdir)] = self
        return self

    def release(self) -> None:
        if self._outer is not None:
            self._outer = None
            return
        if self._fd is not None:
            _HELD.pop(str(self.workdir), None)
            try:  # a clean exit leaves an empty file; a record of a dead pid means a killed holder
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def holds(workdir: str | Path) -> bool:
    """This process holds the workdir's lock."""
    return str(Path(workdir).resolve()) in _HELD


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")


def _wait_for_record(fd: int, wait_s: float = 1.0) -> LockHolder | None:
    """The lock holder's record. A holder writes it just after taking the lock, so an empty file,
    or one still naming a dead process, is re-read for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = parse_holder(_read(fd))
        if (holder is not None and not holder.dead_here()) or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


# ----------------------------------------------------------------------------- one-line errors
ADVICE = {
    errno.EACCES: "no permission: run as the workdir's owner or fix its permissions",
    errno.EPERM: "not permitted: run as the workdir's owner or fix its permissions",
    errno.EROFS: "the filesystem is read-only: use a writable copy of the workdir "
    "(cdhpc status and report work read-only)",
    errno.ENOSPC: "the disk is full: free space, then run the same command again (re-running is safe)",
    errno.EDQUOT: "the disk quota is exceeded: free space, then run the same command again "
    "(re-running is safe)",
}


def error_line(e: BaseException) -> str | None:
    """Pure: the one line for an expected failure (lock held, a workdir that cannot be written,
    a full disk, a manifest that cannot be used), or None for anything else (a bug: traceback)."""
    from cdhpc.sweep.manifest_db import ManifestError

    if isinstance(e, (WorkdirBusy, WorkdirError, ManifestError)):
        return str(e)
    if isinstance(e, OSError) and e.errno in ADVICE:
        where = e.filename if e.filename is not None else "the workdir"
        return f"cdhpc: {where}: {e.strerror or os.strerror(e.errno)}; {ADVICE[e.errno]}"
    if isinstance(e, sqlite3.OperationalError) and "disk is full" in str(e):
        return f"cdhpc: manifest.sqlite: {e}; {ADVICE[errno.ENOSPC]}"
    return None

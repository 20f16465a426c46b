"""Atomic writes and sha256: every file a later step or process reads is written to a temporary
file, fsynced and renamed into place (docs/design.md §9), with the mode the umask gives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it: Linux reports it in /proc/self/status, which
    is thread-safe (``os.umask`` can only be read by setting it, which races with other threads
    creating files). Elsewhere it is read once, by setting and restoring it."""
    global _UMASK_FALLBACK
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _UMASK_FALLBACK is None:
        _UMASK_FALLBACK = os.umask(0o022)
        os.umask(_UMASK_FALLBACK)
    return _UMASK_FALLBACK


_UMASK_FALLBACK: int | None = None


def follow_umask(path: str | Path) -> None:
    """Give `path` (and, for a directory, everything under it) the mode a plain ``open`` or
    ``mkdir`` would have under the umask: 0644/0755 under umask 022, 0640/0750 under 027.
    ``mkstemp``/``mkdtemp`` (and some writers, e.g. safetensors) create owner-only files, and an
    atomic rename keeps that mode; on a shared cluster the group could not read the results."""
    mask = current_umask()
    root = Path(path)
    for p in [root, *(root.rglob("*") if root.is_dir() and not root.is_symlink() else [])]:
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            os.chmod(p, 0o777 & ~mask)
        elif stat.S_ISREG(st.st_mode):  # executables keep their x bits, as the umask allows
            os.chmod(p, (0o777 if st.st_mode & 0o100 else 0o666) & ~mask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    The file gets the umask's mode, as ``open(path, "wb")`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success give it and its contents the umask's
    modes (`follow_umask`), fsync its files and rename it into place (replacing an older
    `final`); on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        follow_umask(tmp)  # mkdtemp creates 0700
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()

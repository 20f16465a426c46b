"""Atomic writes, sha256, and receipts: the JSON a finished step writes last, next to its outputs.

A receipt with status "ok" whose outputs still hash to what it lists is the proof that a step is
done. Receipts live under ``workdir/receipts/<stage>/<name>-<key8>.json``; steps write only files
(never the database), so they are safe on a network filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from cdhpc.paths import inside
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    """Yield a temp directory beside `final`; on success fsync its files and rename it into place
    (replacing an older `final`); on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
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


class OutputFile(BaseModel):
    """One output file: path relative to the workdir, content hash, size, and mtime at hashing."""

    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str
    bytes: int
    mtime_ns: int


class Receipt(BaseModel):
    """What a step did. Written last; "failed" and "cancelled" (SIGTERM/SIGINT) receipts keep the
    error and log paths. Only "ok" proves a step done; the others leave it to run again."""

    model_config = ConfigDict(extra="forbid")
    key: str
    stage: str
    name: str
    status: Literal["ok", "failed", "cancelled"]
    spec: dict[str, Any]
    outputs: list[OutputFile] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    """Manifest rows by table (checkpoints, shards, scores): the data the manifest indexes."""
    started: float
    finished: float
    versions: dict[str, str] = Field(default_factory=dict)
    host: str = ""
    slurm: dict[str, str] = Field(default_factory=dict)
    attempt: int = 1
    error: str | None = None
    logs: dict[str, str] = Field(default_factory=dict)


class ReceiptError(ValueError):
    """A receipt that cannot be read (truncated, not JSON, wrong schema)."""


def receipt_path(workdir: str | Path, stage: str, name: str, key: str) -> Path:
    return inside(workdir, "receipts", stage, f"{name}-{key[:8]}.json")


def describe_outputs(workdir: str | Path, paths: list[Path]) -> list[OutputFile]:
    """Hash every file under the given files/directories (sorted, relative to workdir)."""
    workdir = Path(workdir)
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        st = f.stat()
        out.append(OutputFile(path=str(f.relative_to(workdir)), sha256=sha256_file(f), bytes=st.st_size,
                              mtime_ns=st.st_mtime_ns))
    return out


def write_receipt(workdir: str | Path, receipt: Receipt) -> Path:
    path = receipt_path(workdir, receipt.stage, receipt.name, receipt.key)
    atomic_write_text(path, receipt.model_dump_json(indent=1) + "\n")
    return path


def read_receipt(path: str | Path) -> Receipt:
    try:
        return Receipt.model_validate_json(Path(path).read_bytes())
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        raise ReceiptError(f"{path}: not a valid receipt ({first['msg']}{f' at {where}' if where else ''})") from None
    except OSError as e:
        raise ReceiptError(f"{path}: cannot read receipt ({e.strerror})") from None


def output_intact(workdir: Path, out: OutputFile, rehash: bool = False) -> bool:
    """True when the file still holds what the receipt says. Unchanged size and mtime are trusted
    (as git and make do) unless `rehash`; anything else is re-hashed."""
    path = workdir / out.path
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != out.bytes:
        return False
    if not rehash and st.st_mtime_ns == out.mtime_ns:
        return True
    return sha256_file(path) == out.sha256

"""Receipts: the JSON a finished step writes last, next to its outputs
(atomic writes and sha256 are ``cdhpc.base.atomicio``).

A receipt with status "ok" whose outputs still hash to what it lists is the proof that a step is
done. Receipts live under ``workdir/receipts/<stage>/<name>-<key8>.json``; steps write only files
(never the database), so they are safe on a network filesystem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cdhpc.base.atomicio import atomic_write_text, sha256_file
from cdhpc.sweep.workdir import Workdir


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
    return Workdir(workdir).receipt(stage, name, key)


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
        out.append(
            OutputFile(
                path=str(f.relative_to(workdir)),
                sha256=sha256_file(f),
                bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
            )
        )
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
        raise ReceiptError(
            f"{path}: not a valid receipt ({first['msg']}{f' at {where}' if where else ''})"
        ) from None
    except OSError as e:
        raise ReceiptError(f"{path}: cannot read receipt ({e.strerror})") from None

"""Reading evaluation files (JSONL records, the reading CSV, held-out text) with errors that name
the file, the line and the field. Pure apart from reading the files it is given; no torch."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any


# pandas.read_csv's default missing-value strings: the official readers see such a cell as NaN
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def is_na(value: str | None) -> bool:
    """Whether pandas would read this CSV cell as missing."""
    return value is None or value in PANDAS_NA


class EvalDataError(ValueError):
    """A malformed evaluation file: the message names the file, line and field and what is allowed."""


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records of a JSONL file; every record must be an object holding the `required` fields.

    Blank lines are skipped (the official reader would fail on them; they carry nothing). Raises
    EvalDataError on an empty file, bad JSON or a missing field, naming file and 1-based line.
    """
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path}:{line_no}: bad JSON ({err.msg} at column {err.colno}); "
                                    "each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{path}:{line_no}: expected a JSON object, got "
                                    f"{type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise EvalDataError(f"{path}:{line_no}: missing field(s) {missing}; records of this "
                                    f"task need {list(required)}")
            records.append(record)
    if not records:
        raise EvalDataError(f"{path}: empty file; expected one JSON record per line")
    return records


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header holding the `required` columns (values stay strings)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if not header:
            raise EvalDataError(f"{path}: empty file; expected a CSV header with {list(required)}")
        if missing:
            raise EvalDataError(f"{path}:1: CSV header lacks column(s) {missing}; "
                                f"required: {list(required)}")
        rows = list(reader)
    if not rows:
        raise EvalDataError(f"{path}: no data rows after the header")
    for i, row in enumerate(rows):
        if None in row or any(v is None for v in row.values()):
            raise EvalDataError(f"{path}:{i + 2}: row has {len(row)} cells, header has {len(header)}")
    return rows


def parse_float(value: str, path: Path, line_no: int, column: str) -> float:
    """A CSV/JSON number; a missing cell (PANDAS_NA, surrounding spaces aside) is NaN, as pandas
    reads it; anything else that is not a number fails."""
    text = str(value).strip()
    if text in PANDAS_NA:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise EvalDataError(f"{path}:{line_no}: column {column!r} must be a number, "
                            f"got {value!r}") from None


def read_documents(path: Path) -> list[str]:
    """Documents of a held-out text file: groups of non-empty lines separated by empty lines,
    each joined with newlines."""
    docs: list[str] = []
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            lines.append(line)
        elif lines:
            docs.append("\n".join(lines))
            lines = []
    if lines:
        docs.append("\n".join(lines))
    return docs


def data_sha256(files: list[Path], root: Path) -> str:
    """sha256 over the files read, in sorted order: each file's path relative to `root`, a NUL,
    its bytes, a NUL. Renaming or editing any file changes it."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def list_files(directory: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `directory`, sorted; a missing directory or no match fails."""
    if not directory.is_dir():
        raise EvalDataError(f"{directory}: no such directory; expected the task's evaluation data "
                            "there (see cdhpc.toydata for the layout)")
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise EvalDataError(f"{directory}: no files matching {pattern!r}")
    return files

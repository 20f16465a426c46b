"""Reading evaluation files (JSONL records, the reading CSV, held-out text) with errors that name
the file, the line and the field. Pure apart from reading the files it is given; no torch."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# pandas.read_csv's default missing-value strings: the official readers see such a cell as NaN
PANDAS_NA = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


def is_na(value: str | None) -> bool:
    """Whether pandas would read this CSV cell as missing."""
    return value is None or value in PANDAS_NA


class EvalDataError(ValueError):
    """A malformed evaluation file: the message names the file, line and field and what is allowed."""


MAX_FILE_BYTES = 2 * 1024**3
"""Largest evaluation file read (2 GiB; the whole BabyLM 2025 evaluation_data is ~100x smaller)."""
MAX_LINE_CHARS = 1 << 20
"""Longest JSONL line, text line or CSV line/field read (1 Mi characters; the longest real
records, entity-tracking prefixes, are a few KB). A longer one fails before it is held whole."""

_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte UTF-8 rejects


def check_size(path: Path) -> None:
    """EvalDataError when `path` is larger than MAX_FILE_BYTES (checked before reading it)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EvalDataError(
            f"{path}: {size:,} bytes; evaluation files are limited to "
            f"{MAX_FILE_BYTES:,} bytes (2 GiB): is this the right file?"
        )


def _decoded(path: Path, line_no: int, line: str) -> str:
    """`line` itself, or EvalDataError naming the line, column and byte UTF-8 cannot decode."""
    bad = _UNDECODABLE.search(line)
    if bad:
        raise EvalDataError(
            f"{path}:{line_no}: undecodable byte 0x{ord(bad.group()) - 0xDC00:02x} at "
            f"column {bad.start() + 1}; evaluation files must be UTF-8 (re-save the "
            "file as UTF-8)"
        )
    return line


def read_lines(path: Path, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its ending) of a UTF-8 text file, as iterating the open
    file gives them, read in bounded pieces: a file over MAX_FILE_BYTES, a line over
    MAX_LINE_CHARS or bytes that are not UTF-8 fail with EvalDataError naming file and line.
    `newline`: as for open() ("" keeps line endings untranslated, for the csv module)."""
    check_size(path)
    with path.open(encoding="utf-8", errors="surrogateescape", newline=newline) as f:
        for line_no, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), start=1):
            if len(line) > MAX_LINE_CHARS:
                raise EvalDataError(
                    f"{path}:{line_no}: line longer than {MAX_LINE_CHARS:,} characters "
                    "(the limit for one record or text line); is this the right file?"
                )
            yield line_no, _decoded(path, line_no, line)


def read_text(path: Path) -> str:
    """The whole text of a UTF-8 file of at most MAX_FILE_BYTES; bytes that are not UTF-8 fail
    naming the line, column and byte offset."""
    check_size(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line_no = data.count(b"\n", 0, err.start) + 1
        raise EvalDataError(
            f"{path}:{line_no}: undecodable byte 0x{data[err.start]:02x} at byte offset "
            f"{err.start} (column {err.start - line_start + 1}); evaluation files must "
            "be UTF-8 (re-save the file as UTF-8)"
        ) from None


def read_records(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) of a JSONL file; every record must be an object holding the
    `required` fields. Blank lines are skipped (the official reader would fail on them; they carry
    nothing). Raises EvalDataError on an empty file, bad JSON, a missing field, or the limits of
    `read_lines`, naming file and line."""
    records: list[tuple[int, dict[str, Any]]] = []
    for line_no, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalDataError(
                f"{path}:{line_no}: bad JSON ({err.msg} at column {err.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise EvalDataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        missing = [k for k in required if k not in record]
        if missing:
            raise EvalDataError(
                f"{path}:{line_no}: missing field(s) {missing}; records of this task need {list(required)}"
            )
        records.append((line_no, record))
    if not records:
        raise EvalDataError(f"{path}: empty file; expected one JSON record per line")
    return records


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The records of `read_records`, without their line numbers."""
    return [record for _, record in read_records(path, required)]


def json_type(value: Any) -> str:
    """How JSON names the type of a parsed value (null, boolean, number, string, array, object)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def check_text_fields(path: Path, line_no: int, record: dict[str, Any], fields: tuple[str, ...]) -> None:
    """EvalDataError unless every field of `fields` present in `record` holds a string. The
    official readers would score null as the text "None" and a list as its Python repr (or
    crash); a record that is not text is refused here instead."""
    for name in fields:
        value = record.get(name, "")
        if not isinstance(value, str):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise EvalDataError(
                f"{path}:{line_no}: field {name!r} must be a string (the text "
                f"scored), got {json_type(value)} {shown}; write the text in quotes "
                "or drop the record"
            )


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header holding the `required` columns (values stay strings).
    Limits as `read_lines`; a quoted field spanning lines is limited to MAX_LINE_CHARS too."""
    lines = (line for _, line in read_lines(path, newline=""))
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_LINE_CHARS)  # process-wide: restored below
    try:
        reader = csv.DictReader(lines)
        try:
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if not header:
                raise EvalDataError(f"{path}: empty file; expected a CSV header with {list(required)}")
            if missing:
                raise EvalDataError(
                    f"{path}:1: CSV header lacks column(s) {missing}; required: {list(required)}"
                )
            rows = list(reader)
        except csv.Error as err:
            raise EvalDataError(
                f"{path}:{reader.line_num}: bad CSV ({err}); a field may hold at most "
                f"{MAX_LINE_CHARS:,} characters"
            ) from None
    finally:
        csv.field_size_limit(limit)
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
        raise EvalDataError(f"{path}:{line_no}: column {column!r} must be a number, got {value!r}") from None


def read_documents(path: Path) -> list[str]:
    """Documents of a held-out text file: groups of non-empty lines separated by empty lines,
    each joined with newlines. Read line by line within the limits of `read_lines`; lines break
    where str.splitlines breaks them."""
    docs: list[str] = []
    lines: list[str] = []
    for line in (part for _, text in read_lines(path) for part in text.splitlines()):
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
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def list_files(directory: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `directory`, sorted; a missing directory or no match fails."""
    if not directory.is_dir():
        raise EvalDataError(
            f"{directory}: no such directory; expected the task's evaluation data "
            "there (see cdhpc.toydata for the layout)"
        )
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise EvalDataError(f"{directory}: no files matching {pattern!r}")
    return files

"""Training metrics: ``metrics.jsonl`` beside a pretrain step's ``checkpoints/``, one JSON line per
optimizer step, and the readers of it (the status views' tail: ``cdhpc.ui.training``; the export's
``training.png``:
``cdhpc.results.figures``).

A line: ``step``, ``tokens`` (seen so far), ``loss`` (mean over the step's micro-batches and
ranks), ``lr`` (the step's learning rate), ``grad_norm`` (global 2-norm before clipping),
``tokens_per_s`` (this step), ``mfu`` on a GPU with a known peak or ``matmul_utilisation`` on a
CPU (achieved model FLOP/s over a *measured* fp32 matmul rate: not comparable to a GPU's MFU),
``time`` (unix s), and at each checkpoint ``val_loss``/``val_ppl`` on the held-out split. A
number that is not finite (a diverged run) is written as null.

Lines are appended in windows (every ``log_every`` steps, at each checkpoint, at the end) and
fsynced. A resumed run restarts after its last DeepSpeed checkpoint, so ``MetricsLog`` first
drops every line past that step (and a line torn by a kill): each step appears once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"
CSV_COLUMNS = (
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "matmul_utilisation",
    "val_loss",
    "val_ppl",
    "time",
)
TAIL_BYTES = 16 * 1024  # the status views read at most this much of a metrics file


def finite(value: Any) -> float | None:
    """A JSON-safe number: None for None, NaN and infinities."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_step(line: str) -> int | None:
    try:
        record = json.loads(line)
        return int(record["step"]) if isinstance(record, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _csv_step(line: str) -> int | None:
    head = line.split(",", 1)[0]
    return int(head) if head.isdigit() else None


def keep_through(path: Path, step: int, csv: bool = False) -> int:
    """Rewrite ``path`` (atomically) with only its complete lines of steps <= ``step`` (a CSV keeps
    its header); returns the lines kept. Nothing is written when nothing is dropped."""
    from cdhpc.base.atomicio import atomic_write_text

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # the part after the last newline is a torn line: dropped
    parse = _csv_step if csv else _json_step
    kept = [
        ln
        for ln in lines
        if (s := parse(ln)) is not None and s <= step or csv and ln == ",".join(CSV_COLUMNS)
    ]
    new = "".join(f"{ln}\n" for ln in kept)
    if new != text:
        atomic_write_text(path, new)
    return len(kept)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class MetricsLog:
    """Rank 0's writer: ``metrics.jsonl`` (and ``metrics.csv`` when asked), truncated to
    ``resume_step`` on open, then appended; every record is also handed to the ``trackers``
    (objects with ``log(records)`` and ``close()``, see ``cdhpc.lm.trackers``)."""

    def __init__(self, out_dir: Path, resume_step: int, csv: bool = False, trackers: Sequence[Any] = ()):
        self.path = Path(out_dir) / METRICS_FILE
        self.csv_path = Path(out_dir) / CSV_FILE if csv else None
        self.trackers = list(trackers)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep_through(self.path, resume_step)
        _append(self.path, "")  # exists from the start: a step's outputs list it
        if self.csv_path is not None and keep_through(self.csv_path, resume_step, csv=True) == 0:
            _append(self.csv_path, ",".join(CSV_COLUMNS) + "\n")

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = [
            {k: finite(v) if k not in ("step", "tokens") else int(v) for k, v in r.items()} for r in records
        ]
        if not records:
            return
        _append(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        if self.csv_path is not None:
            rows = (",".join("" if r.get(c) is None else repr(r[c]) for c in CSV_COLUMNS) for r in records)
            _append(self.csv_path, "".join(row + "\n" for row in rows))
        for tracker in self.trackers:
            tracker.log(records)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


# ----------------------------------------------------------------------------- readers
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics.jsonl (a torn or garbled line is skipped); [] if absent."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for line in text.split("\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def latest_metrics(path: Path, tail_bytes: int = TAIL_BYTES) -> dict[str, Any] | None:
    """The last complete line of a metrics.jsonl, reading only its last ``tail_bytes`` bytes (the
    status views call this on every refresh); None when there is none yet."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    for line in reversed(tail.split("\n")[:-1]):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record
    return None


@dataclass(frozen=True)
class TrainingCurve:
    """One run's metrics for the plot: its name, its table label (method, `@q` when several)."""

    run: str
    method: str
    records: list[dict[str, Any]]


def training_curves(
    run_dir: Callable[[str, str], Path], eval_specs: Iterable[Mapping[str, Any]]
) -> list[TrainingCurve]:
    """The curves of the runs that evaluate steps read (each run once, in first-seen order),
    labelled as the table's rows are. Runs without a metrics.jsonl (yet) have no records.
    `run_dir(name, key)`: the pretrain step's output folder (the workdir layout's owner,
    ``cdhpc.sweep.workdir``, which this library package may not import, gives it)."""
    from cdhpc.base.names import method_labels

    specs = list(eval_specs)
    labels = method_labels([s["params"] for s in specs])
    seen: dict[str, TrainingCurve] = {}
    for s in specs:
        p, key = s["params"], s["inputs"].get("model")  # every planned evaluate step has one
        if key is not None and key not in seen:
            path = run_dir(p["run"], key) / METRICS_FILE
            seen[key] = TrainingCurve(
                p["run"], labels[(p["method"], p["synthetic_share"])], read_metrics(path)
            )
    return list(seen.values())

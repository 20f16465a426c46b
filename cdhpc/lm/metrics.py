"""Training metrics: ``metrics.jsonl`` beside a pretrain step's ``checkpoints/``, one JSON line per
optimizer step, and the readers of it (the status views' tail, the export's ``training.png``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

METRICS_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"
CSV_COLUMNS = ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "matmul_utilisation",
               "val_loss", "val_ppl", "time")
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
    from cdhpc.sweep.receipts import atomic_write_text

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # the part after the last newline is a torn line: dropped
    parse = _csv_step if csv else _json_step
    kept = [ln for ln in lines if (s := parse(ln)) is not None and s <= step
            or csv and ln == ",".join(CSV_COLUMNS)]
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
        records = [{k: finite(v) if k not in ("step", "tokens") else int(v) for k, v in r.items()} for r in records]
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


def pretrain_metrics_path(workdir: Path, name: str, key: str) -> Path:
    """metrics.jsonl of the pretrain step ``name`` with key ``key`` (its output directory)."""
    from cdhpc.base.paths import component, inside

    return inside(workdir, "pretrain", component(f"{name}-{key[:8]}"), METRICS_FILE)


@dataclass(frozen=True)
class TrainingProgress:
    """The last metrics line of a pretrain step, as the status views show it."""

    key: str
    name: str
    step: int
    steps: int | None  # the run's optimizer steps (plan), None if unknown
    loss: float | None
    tokens_per_s: float | None
    age_s: float | None  # seconds since that line was written

    def text(self) -> str:
        """``step 40/120  loss 4.2310  tokens/s 7,426  (12s ago)``."""
        from cdhpc.ui.status import format_duration

        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        rate = "-" if self.tokens_per_s is None else f"{self.tokens_per_s:,.0f}"
        age = "" if self.age_s is None else f"  ({format_duration(self.age_s)} ago)"
        return f"step {self.step}/{self.steps or '?'}  loss {loss}  tokens/s {rate}{age}"


def step_progress(workdir: Path, step: Mapping[str, Any], now: float) -> TrainingProgress | None:
    """The latest metrics line of one pretrain step (a plan.json step dict), or None."""
    record = latest_metrics(pretrain_metrics_path(workdir, step["name"], step["key"]))
    if record is None:
        return None
    steps = (step.get("params") or {}).get("train", {}).get("steps")
    age = max(0.0, now - record["time"]) if isinstance(record.get("time"), (int, float)) else None
    return TrainingProgress(step["key"], step["name"], record["step"], steps, record.get("loss"),
                            record.get("tokens_per_s"), age)


def running_progress(workdir: Path, steps: Iterable[Mapping[str, Any]], states: Mapping[str, str],
                     now: float) -> list[TrainingProgress]:
    """``step_progress`` of every running pretrain step that has written a line."""
    out = (step_progress(workdir, s, now) for s in steps
           if s["stage"] == "pretrain" and states.get(s["key"]) == "running")
    return [p for p in out if p is not None]


def print_training(console: Any, snap: Any) -> None:
    """``cdhpc status --once``'s table of the running pretrain steps (a ``cdhpc.ui.status.Snapshot``)
    with their latest step, loss and tokens/s, when there are any."""
    import time

    from rich.table import Table

    rows = running_progress(snap.workdir, snap.steps, snap.states, snap.now or time.time())
    if rows:
        table = Table(title=f"{len(rows)} pretrain step(s) training")
        for col in ("name", "training"):
            table.add_column(col)
        for p in rows:
            table.add_row(p.name, p.text())
        console.print(table)


@dataclass(frozen=True)
class TrainingCurve:
    """One run's metrics for the plot: its name, its table label (method, `@q` when several)."""

    run: str
    method: str
    records: list[dict[str, Any]]


def training_curves(workdir: Path, eval_specs: Iterable[Mapping[str, Any]]) -> list[TrainingCurve]:
    """The curves of the runs that evaluate steps read (each run once, in first-seen order),
    labelled as the table's rows are. Runs without a metrics.jsonl (yet) have no records."""
    from cdhpc.ui.partial import method_labels

    specs = list(eval_specs)
    labels = method_labels([s["params"] for s in specs])
    seen: dict[str, TrainingCurve] = {}
    for s in specs:
        p, key = s["params"], s["inputs"].get("model")  # every planned evaluate step has one
        if key is not None and key not in seen:
            path = pretrain_metrics_path(workdir, p["run"], key)
            seen[key] = TrainingCurve(p["run"], labels[(p["method"], p["synthetic_share"])], read_metrics(path))
    return list(seen.values())


def plot_training(curves: Sequence[TrainingCurve], path: Path, partial: str | None = None) -> Path | None:
    """``training.png``: training loss and validation perplexity vs tokens seen, one line per run,
    one colour per method (seeds share it). None (nothing written) when no run has metrics."""
    curves = [c for c in curves if c.records]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from cdhpc.results.report import _plain_text, partial_line

    methods = list(dict.fromkeys(c.method for c in curves))
    colours = {m: plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")(i % 20) for i, m in enumerate(methods)}
    with matplotlib.rc_context(_plain_text()):
        fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4))
        labelled: set[str] = set()
        for c in curves:
            label = None if c.method in labelled else c.method
            labelled.add(c.method)
            train = [r for r in c.records if r.get("loss") is not None]
            val = [r for r in c.records if r.get("val_ppl") is not None]
            loss_ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=colours[c.method],
                         linewidth=0.8, alpha=0.8, label=label)
            ppl_ax.plot([r["tokens"] for r in val], [r["val_ppl"] for r in val], color=colours[c.method],
                        marker="o", markersize=3, linewidth=1, label=label)
        loss_ax.set(xlabel="tokens seen", ylabel="training loss", title="training loss")
        ppl_ax.set(xlabel="tokens seen", ylabel="validation perplexity", title="validation perplexity (held-out split)",
                   yscale="log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # log ticks without mathtext
        ppl_ax.yaxis.set_major_formatter(plain)
        ppl_ax.yaxis.set_minor_formatter(plain)
        loss_ax.legend(fontsize="small")
        if partial is not None:
            fig.suptitle(partial_line(partial), fontsize="small", color="tab:red")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return Path(path)

"""The status views of running pretrain steps: their latest metrics line (step, loss, tokens/s,
age), for `cdhpc status --once` and the TUI (read from ``cdhpc.lm.metrics``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdhpc.lm.metrics import METRICS_FILE, latest_metrics
from cdhpc.sweep.workdir import Workdir
from cdhpc.ui.overview import format_duration


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
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        rate = "-" if self.tokens_per_s is None else f"{self.tokens_per_s:,.0f}"
        age = "" if self.age_s is None else f"  ({format_duration(self.age_s)} ago)"
        return f"step {self.step}/{self.steps or '?'}  loss {loss}  tokens/s {rate}{age}"


def step_progress(workdir: Path, step: Mapping[str, Any], now: float) -> TrainingProgress | None:
    """The latest metrics line of one pretrain step (a plan.json step dict), or None."""
    record = latest_metrics(Workdir(workdir).step_dir("pretrain", step["name"], step["key"]) / METRICS_FILE)
    if record is None:
        return None
    steps = (step.get("params") or {}).get("train", {}).get("steps")
    age = max(0.0, now - record["time"]) if isinstance(record.get("time"), (int, float)) else None
    return TrainingProgress(
        step["key"], step["name"], record["step"], steps, record.get("loss"), record.get("tokens_per_s"), age
    )


def running_progress(
    workdir: Path, steps: Iterable[Mapping[str, Any]], states: Mapping[str, str], now: float
) -> list[TrainingProgress]:
    """``step_progress`` of every running pretrain step that has written a line."""
    out = (
        step_progress(workdir, s, now)
        for s in steps
        if s["stage"] == "pretrain" and states.get(s["key"]) == "running"
    )
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

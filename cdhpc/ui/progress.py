"""Per-stage progress bars for a local launch on a terminal (Rich); plain log lines otherwise."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from cdhpc.sweep.plan import Plan


class StageProgress:
    """One bar per stage (done / total, running and failed counts), fed the scheduler's states.
    Log records go through the same console, above the bars."""

    def __init__(self, plan: Plan):
        from rich.console import Console
        from rich.logging import RichHandler
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.stage_of = {s.key: s.stage for s in plan.steps}
        totals = Counter(self.stage_of.values())
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.tasks = {stage: self.progress.add_task(stage, total=n, extra="") for stage, n in totals.items()}
        root = logging.getLogger()
        self._saved = root.handlers[:]
        root.handlers = [RichHandler(console=self.progress.console, show_path=False, show_level=False)]

    def update(self, states: dict[str, str]) -> None:
        by_stage: dict[str, Counter] = {}
        for key, state in states.items():
            by_stage.setdefault(self.stage_of[key], Counter())[state] += 1
        for stage, c in by_stage.items():
            extra = ", ".join(f"{c[s]} {s}" for s in ("running", "failed", "blocked") if c[s])
            self.progress.update(self.tasks[stage], completed=c["done"], extra=extra)

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()
        logging.getLogger().handlers = self._saved

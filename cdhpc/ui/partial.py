"""Pure: the paper table from the point scores evaluated so far (the TUI's Results tab, the
labels of ``training.png``). Re-exported by ``cdhpc.ui.status``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdhpc.base.names import method_labels

if TYPE_CHECKING:
    from cdhpc.ui.status import Snapshot

LOWER_IS_BETTER = ("perplexity",)


@dataclass(frozen=True)
class PartialTable:
    """The paper table from the point scores evaluated so far (no bootstrap, no significance).

    cells[(method, task)] = (mean over seeds of each seed's best checkpoint so far,
    evaluate steps with a score, evaluate steps planned)."""

    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    cells: dict[tuple[str, str], tuple[float, int, int]]

    @property
    def complete(self) -> bool:
        return all(n == planned for _, n, planned in self.cells.values()) and len(self.cells) == len(
            self.methods
        ) * len(self.tasks)


def partial_table(snap: Snapshot) -> PartialTable:
    """Pure: mean-max over the checkpoints scored so far, per (method, task). Perplexity keeps the
    lowest checkpoint, every other task the highest; ties go to the earliest step."""
    evals = [s for s in snap.steps if s["stage"] == "evaluate"]
    labels = method_labels([s["params"] for s in evals])
    planned: Counter = Counter()
    scored: Counter = Counter()
    best: dict[tuple[str, str], dict[Any, tuple[int, float]]] = {}
    for s in sorted(evals, key=lambda s: s["params"]["step"]):
        p = s["params"]
        cell = (labels[(p["method"], p["synthetic_share"])], p["task"])
        planned[cell] += 1
        score = snap.scores.get(s["key"])
        if score is None:
            continue
        scored[cell] += 1
        seeds = best.setdefault(cell, {})
        old = seeds.get(p["seed"])
        better = old is None or (score < old[1] if p["task"] in LOWER_IS_BETTER else score > old[1])
        if better:
            seeds[p["seed"]] = (p["step"], score)
    cells = {
        cell: (sum(v for _, v in seeds.values()) / len(seeds), scored[cell], planned[cell])
        for cell, seeds in best.items()
    }
    methods = tuple(dict.fromkeys(c[0] for c in planned))
    tasks = tuple(dict.fromkeys(c[1] for c in planned))
    return PartialTable(methods, tasks, cells)

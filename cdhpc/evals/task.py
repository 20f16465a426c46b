"""What a task is: where its files live, how a record becomes candidates, how scores aggregate.
Plain data; no torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item: candidate i is the sentence `contexts[i] + continuations[i]`,
    scored on the continuation; candidate 0 is the correct one. `completions` is what the official
    predictions.json shows as `pred` (the continuations, or `shown` where the official reader
    shows something else: COMPS shows the whole sentence); `meta` holds the report categories
    (UID first-class)."""

    uid: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    meta: dict[str, str] = field(default_factory=dict)
    ratio: float | None = None
    shown: tuple[str, ...] | None = None

    @property
    def completions(self) -> tuple[str, ...]:
        return self.shown if self.shown is not None else self.continuations


def macro_mean(per_uid: dict[str, float]) -> float:
    """Unweighted mean over UIDs (the BabyLM task score)."""
    return sum(per_uid.values()) / len(per_uid)


@dataclass(frozen=True)
class Task:
    """One evaluation task. `kind` picks the runner: choice, reading or perplexity.
    Directories are relative to the `evaluation_data` directory."""

    name: str
    version: str
    kind: str
    full_dir: str
    fast_dir: str
    pattern: str
    required: tuple[str, ...] = ()
    parse: Callable[[dict[str, Any], Path], ChoiceItem] | None = None
    aggregate: Callable[[dict[str, float]], float] = macro_mean
    metric: str = "accuracy"

    def data_dir(self, eval_dir: Path, fast: bool) -> Path:
        """Where this task's files are under `eval_dir` (full or fast set)."""
        return eval_dir / (self.fast_dir if fast else self.full_dir)

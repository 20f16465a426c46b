"""Evaluation tasks (BabyLM 2025 suite + perplexity). The names are plain data so the config
validator can check them without importing torch."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdhpc.evals.task import Task

TASK_NAMES = (
    "blimp",
    "blimp_supplement",
    "ewok",
    "entity_tracking",
    "wug",
    "wug_past",
    "comps",
    "reading",
    "eye_tracking",
    "aoa",
    "perplexity",
)
SCORING = ("official", "joint")
"""Which tokens are scored (docs/evaluation.md): the official pipeline's rules, or ours."""
WUG_METRICS = ("spearman", "accuracy")
"""The `wug` task's metric: Spearman's rho with the human ratio (official), or the paper's accuracy."""
_METRICS = {
    "wug_past": "spearman",
    "comps": "accuracy",
    "reading": "delta_r2",
    "eye_tracking": "delta_r2",
    "aoa": "pearson",
    "perplexity": "perplexity",
}


def task_metric(task: str, wug_metric: str = "spearman") -> str:
    """The metric a task's score is in: accuracy (%), spearman, pearson, delta_r2 (%) or
    perplexity; `wug` takes `wug_metric`."""
    return wug_metric if task == "wug" else _METRICS.get(task, "accuracy")


def get_task(name: str) -> Task:
    """The task called `name` (its module is imported on demand; none imports torch)."""
    if name not in TASK_NAMES:
        close = difflib.get_close_matches(name, TASK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; known tasks: {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"cdhpc.evals.{name}").TASK

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
    "reading",
    "eye_tracking",
    "perplexity",
)


def get_task(name: str) -> Task:
    """The task called `name` (its module is imported on demand; none imports torch)."""
    if name not in TASK_NAMES:
        close = difflib.get_close_matches(name, TASK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; known tasks: {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"cdhpc.evals.{name}").TASK

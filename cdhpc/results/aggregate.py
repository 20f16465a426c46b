"""From per-item predictions to bootstrap vectors: the bridge between the evaluate stage's files
and ``cdhpc.results.stats``. Pure given the loaded rows; every model shares one index set per task."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from cdhpc.results import stats

CHOICE_TASKS = ("blimp", "blimp_supplement", "ewok", "entity_tracking", "wug", "wug_past", "comps")
REGRESSION_TASKS = ("reading", "eye_tracking")


def items_per_uid(task: str, rows: list[dict[str, Any]], metric: str = "accuracy") -> dict[str, int]:
    """How many resampling units each UID of a task has (items, words or blocks); `metric` is
    the task's (cdhpc.evals.task_metric): accuracy resamples items within each UID."""
    if task in CHOICE_TASKS and metric == "accuracy":
        counts: dict[str, int] = defaultdict(int)
        for r in rows:
            counts[f"{task}/{r['uid']}"] += 1
        return dict(counts)
    return {task: len(rows)}


def task_vector(
    task: str,
    rows: list[dict[str, Any]],
    idx: Mapping[str, np.ndarray],
    columns: Mapping[str, np.ndarray] | None = None,
    metric: str = "accuracy",
) -> np.ndarray:
    """Bootstrap vector (B,) of one evaluate step's score on the given index sets (point indices
    give the point value). `columns`: the reading CSV's numeric columns (regression tasks);
    `metric` spearman: WUG as the rank correlation of P(candidate 0) with the human ratio."""
    if task in CHOICE_TASKS and metric == "spearman":
        return stats.spearman_bootstrap([r["prob"] for r in rows], [r["ratio"] for r in rows], idx[task])
    if task == "aoa":  # words resampled; the official Pearson r of model vs child AoA on each draw
        nan = float("nan")
        return stats.pearson_bootstrap(
            [nan if r["model_aoa"] is None else r["model_aoa"] for r in rows],
            [nan if r["child_aoa"] is None else r["child_aoa"] for r in rows],
            idx[task],
        )
    if task in CHOICE_TASKS:
        correct: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            correct[f"{task}/{r['uid']}"].append(bool(r["correct"]))
        return stats.accuracy_bootstrap({u: np.array(c) for u, c in correct.items()}, idx)
    if task in REGRESSION_TASKS:
        cols = dict(columns or {})
        cols["surprisal"] = np.array([r["surprisal"] for r in rows], dtype=np.float64)
        cols["prev_surprisal"] = np.array(
            [math.nan if r["prev_surprisal"] is None else r["prev_surprisal"] for r in rows], dtype=np.float64
        )
        return stats.regression_bootstrap(cols, idx[task], task)
    if task == "perplexity":
        return stats.perplexity_bootstrap(np.array([r["mean_loss"] for r in rows]), idx[task])
    raise ValueError(f"no bootstrap for task {task!r}")

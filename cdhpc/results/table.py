"""The paper table from evaluate steps' predictions: one index set per task shared by every model
(paired bootstrap), a bootstrap vector and a point score per (method, seed, step, task), then
`cdhpc.results.report.build_paper_table` (mean-max, deltas, tests). Pure given the loaded
predictions: the aggregate stage (jobs/aggregate.py) reads them from the workdir."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdhpc.base.names import method_labels
from cdhpc.results import stats
from cdhpc.results.aggregate import items_per_uid, task_vector


@dataclass(frozen=True)
class Evaluation:
    """One evaluate step as the table needs it."""

    name: str  # the step's name, for errors
    params: Mapping[str, Any]  # its params: run, method, synthetic_share, seed, step, task
    rows: list[dict[str, Any]]  # its predictions.jsonl
    metric: str  # the task's metric (cdhpc.evals.task_metric)
    task_version: str
    columns: Mapping[str, Any] | None = None  # regression tasks: the reading CSV's numeric columns


def build_table(evaluations: list[Evaluation], params: Mapping[str, Any]):
    """(PaperTable, score records) of the aggregate step's `params` (stats, methods, tasks)."""
    from cdhpc.results.report import build_paper_table

    cfg = params["stats"]
    labels = method_labels([e.params for e in evaluations])
    idx, vectors, points, records, metrics = {}, {}, {}, [], {}
    for e in evaluations:
        p, task = e.params, e.params["task"]
        n_by_uid = items_per_uid(task, e.rows, e.metric)
        if task not in idx:
            idx[task] = (n_by_uid, stats.draw_indices(n_by_uid, cfg["resamples"], cfg["seed"]))
        elif idx[task][0] != n_by_uid:
            raise ValueError(f"{e.name}: item counts differ from other runs of task {task!r}")
        key = (labels[(p["method"], p["synthetic_share"])], p["seed"], p["step"], task)
        vectors[key] = task_vector(task, e.rows, idx[task][1], e.columns, e.metric)
        points[key] = float(task_vector(task, e.rows, stats.point_indices(n_by_uid), e.columns, e.metric)[0])
        metrics[task] = e.metric
        records.append(
            {
                "run": p["run"],
                "method": key[0],
                "seed": p["seed"],
                "step": p["step"],
                "task": task,
                "score": points[key],
                "metric": e.metric,
                "task_version": e.task_version,
            }
        )
    order = {m: i for i, m in enumerate(params["methods"])}  # the config's order, shares ascending
    methods = [labels[k] for k in sorted(labels, key=lambda k: (order[k[0]], k[1]))]
    table = build_paper_table(
        vectors,
        points,
        baseline=cfg["baseline"],
        tasks=params["tasks"],
        methods=methods,
        ties=cfg["ties"],
        correction=cfg["correction"],
        delta_tasks=params.get("delta_tasks"),
        metrics=metrics,
    )
    return table, records

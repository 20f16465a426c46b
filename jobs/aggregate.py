"""aggregate: every score of the sweep -> mean-max, paired bootstrap vs the baseline, muDeltaREL,
and the paper's tables (CSV, Markdown, LaTeX) and plots, published under workdir/results/."""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

from cdhpc import stats
from cdhpc.aggregate import items_per_uid, task_vector
from cdhpc.receipts import atomic_dir
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")


def row_labels(evals: list[dict]) -> dict[tuple[str, float], str]:
    """Table row per (method, synthetic share): the method's name, plus `@q` when it has several."""
    shares = defaultdict(set)
    for p in evals:
        shares[p["method"]].add(p["synthetic_share"])
    return {(m, q): m if len(qs) == 1 else f"{m}@q{q:g}" for m, qs in shares.items() for q in qs}


def run(ctx: StepContext) -> StepResult:
    from cdhpc.report import build_paper_table, render_markdown, write_report

    cfg = ctx.params["stats"]
    roles = list(ctx.spec.inputs)
    receipts = {role: ctx.input_receipt(role) for role in roles}
    evals = {role: r.spec["params"] for role, r in receipts.items()}
    labels = row_labels(list(evals.values()))
    idx, columns, vectors, points, records = {}, {}, {}, {}, []
    for role in roles:
        p = evals[role]
        rows = [json.loads(line) for line in (ctx.input_dir(role) / "predictions.jsonl").read_text().splitlines()]
        n_by_uid = items_per_uid(p["task"], rows)
        if p["task"] not in idx:
            idx[p["task"]] = (n_by_uid, stats.draw_indices(n_by_uid, cfg["resamples"], cfg["seed"]))
        elif idx[p["task"]][0] != n_by_uid:
            raise ValueError(f"{role}: item counts differ from other runs of task {p['task']!r}; all runs must see the same data")
        if p["task"] in ("reading", "eye_tracking") and p["task"] not in columns:
            columns[p["task"]] = _reading_columns(ctx, role, p)
        key = (labels[(p["method"], p["synthetic_share"])], p["seed"], p["step"], p["task"])
        vectors[key] = task_vector(p["task"], rows, idx[p["task"]][1], columns.get(p["task"]))
        points[key] = float(task_vector(p["task"], rows, stats.point_indices(n_by_uid), columns.get(p["task"]))[0])
        records.append({"run": p["run"], "method": key[0], "seed": p["seed"], "step": p["step"], "task": p["task"],
                        "score": points[key], "task_version": receipts[role].rows["scores"][0]["task_version"]})
    methods = list(dict.fromkeys(labels[(e["method"], e["synthetic_share"])] for e in evals.values()))
    table = build_paper_table(vectors, points, baseline=cfg["baseline"], tasks=ctx.params["tasks"], methods=methods,
                              ties=cfg["ties"], correction=cfg["correction"])
    write_report(ctx.out_dir, table, records)
    with atomic_dir(ctx.workdir / "results") as tmp:  # the published copy: results/paper_table.csv, ...
        for f in ctx.out_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
    markdown = render_markdown(table)
    log.info("results table:\n%s", markdown)
    return StepResult(metrics={"table_markdown": markdown, "rows": len(methods)})


def _reading_columns(ctx: StepContext, role: str, params: dict):
    """The numeric columns of the reading CSV this evaluate step read."""
    from cdhpc.evals import get_task
    from cdhpc.evals.reading import load_rows

    eval_receipt = ctx.input_receipt(role)
    if params["data_dir"] == "toy":
        prepare_key = eval_receipt.spec["inputs"]["data"]
        prepare_dir = next(p for p in ctx.workdir.glob(f"prepare/*-{prepare_key[:8]}"))
        data = prepare_dir / "evaluation_data"
    else:
        data = Path(params["data_dir"])
    task = get_task(params["task"])
    return load_rows(task.data_dir(data, params["set"] == "fast") / task.pattern, params["task"])[1]

"""aggregate: every score of the sweep -> mean-max, paired bootstrap vs the baseline, muDeltaREL,
and the paper's tables (CSV, Markdown, LaTeX) and plots, published under workdir/results/.
``cdhpc export`` / ``cdhpc report`` run the same aggregation over the scores that exist so far."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from cdhpc.base.names import method_labels
from cdhpc.results import stats
from cdhpc.results.aggregate import REGRESSION_TASKS, items_per_uid, task_vector
from cdhpc.evals import task_metric
from cdhpc.sweep.plan import StepSpec
from cdhpc.sweep.receipts import Receipt
from cdhpc.sweep.workdir import Workdir
from cdhpc.base.atomicio import atomic_dir
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")




def reading_columns(workdir: Path, receipt: Receipt):
    """The numeric columns of the reading CSV an evaluate step read."""
    from cdhpc.evals import get_task
    from cdhpc.evals.reading import load_rows

    p = receipt.spec["params"]
    if p["data_dir"] == "toy":
        prepare_key = receipt.spec["inputs"]["data"]
        data = next(workdir.glob(f"prepare/*-{prepare_key[:8]}")) / "evaluation_data"
    else:
        data = Path(p["data_dir"])
    task = get_task(p["task"])
    return load_rows(task.data_dir(data, p["set"] == "fast") / task.pattern, p["task"])[1]


def build_table(workdir: Path, receipts: list[Receipt], params: dict):
    """(PaperTable, score records) from the evaluate receipts given; one index set per task."""
    from cdhpc.results.report import build_paper_table

    cfg = params["stats"]
    labels = method_labels([r.spec["params"] for r in receipts])
    idx, columns, vectors, points, records, metrics = {}, {}, {}, {}, [], {}
    for r in receipts:
        p = r.spec["params"]
        out_dir = StepSpec.from_dict(r.spec).out_dir(workdir)
        rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
        metric = task_metric(p["task"], p.get("wug_metric", "spearman"))
        n_by_uid = items_per_uid(p["task"], rows, metric)
        if p["task"] not in idx:
            idx[p["task"]] = (n_by_uid, stats.draw_indices(n_by_uid, cfg["resamples"], cfg["seed"]))
        elif idx[p["task"]][0] != n_by_uid:
            raise ValueError(f"{r.name}: item counts differ from other runs of task {p['task']!r}")
        if p["task"] in REGRESSION_TASKS and p["task"] not in columns:
            columns[p["task"]] = reading_columns(workdir, r)
        key = (labels[(p["method"], p["synthetic_share"])], p["seed"], p["step"], p["task"])
        vectors[key] = task_vector(p["task"], rows, idx[p["task"]][1], columns.get(p["task"]), metric)
        points[key] = float(task_vector(p["task"], rows, stats.point_indices(n_by_uid), columns.get(p["task"]), metric)[0])
        metrics[p["task"]] = metric
        records.append({"run": p["run"], "method": key[0], "seed": p["seed"], "step": p["step"], "task": p["task"],
                        "score": points[key], "metric": metric, "task_version": r.rows["scores"][0]["task_version"]})
    order = {m: i for i, m in enumerate(params["methods"])}  # the config's order, shares ascending
    methods = [labels[k] for k in sorted(labels, key=lambda k: (order[k[0]], k[1]))]
    table = build_paper_table(vectors, points, baseline=cfg["baseline"], tasks=params["tasks"], methods=methods,
                              ties=cfg["ties"], correction=cfg["correction"], delta_tasks=params.get("delta_tasks"),
                              metrics=metrics)
    return table, records


def publish(workdir: Path, table, records, out_dir: Path, partial: str | None = None,
            eval_specs: list[dict] | None = None) -> list[Path]:
    """Write the report into out_dir and publish a copy as workdir/results/ (atomically).
    `partial` (e.g. "3 of 8 evaluate steps done"; None: every score is in) marks every file as
    partial (cdhpc.results.figures.write_report). `eval_specs`: the evaluate steps whose runs' training
    curves go into training.png (cdhpc.results.figures.plot_training)."""
    from cdhpc.results.figures import plot_training
    from cdhpc.lm.metrics import training_curves
    from cdhpc.results.figures import write_report

    write_report(out_dir, table, records, partial=partial)
    if eval_specs:
        plot_training(training_curves(workdir, eval_specs), out_dir / "training.png", partial)
    with atomic_dir(Workdir(workdir).results) as tmp:
        for f in out_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
    return sorted(Workdir(workdir).results.iterdir())


def run(ctx: StepContext) -> StepResult:
    from cdhpc.results.report import render_markdown

    receipts = [ctx.input_receipt(role) for role in ctx.spec.inputs]
    table, records = build_table(ctx.workdir, receipts, ctx.params)
    publish(ctx.workdir, table, records, ctx.out_dir, eval_specs=[r.spec for r in receipts])
    markdown = render_markdown(table)
    log.info("results table:\n%s", markdown)
    return StepResult(metrics={"table_markdown": markdown, "rows": len(table.methods)})

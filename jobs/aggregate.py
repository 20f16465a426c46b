"""aggregate: every score of the sweep -> mean-max, paired bootstrap vs the baseline, muDeltaREL,
and the paper's tables (CSV, Markdown, LaTeX) and plots, published under workdir/results/.
``cdhpc export`` / ``cdhpc report`` run the same aggregation over the scores that exist so far."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cdhpc.results.table as results_table
from cdhpc.base.atomicio import atomic_dir
from cdhpc.evals import task_metric
from cdhpc.results.aggregate import REGRESSION_TASKS
from cdhpc.results.table import Evaluation
from cdhpc.sweep.plan import StepSpec
from cdhpc.sweep.receipts import Receipt
from cdhpc.sweep.workdir import Workdir
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


def evaluations(workdir: Path, receipts: list[Receipt]) -> list[Evaluation]:
    """The evaluate steps' predictions, metrics and (regression tasks) reading columns, as
    cdhpc.results.table.build_table takes them; the columns are read once per task."""
    columns: dict[str, object] = {}
    out = []
    for r in receipts:
        p = r.spec["params"]
        out_dir = StepSpec.from_dict(r.spec).out_dir(workdir)
        rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
        if p["task"] in REGRESSION_TASKS and p["task"] not in columns:
            columns[p["task"]] = reading_columns(workdir, r)
        out.append(
            Evaluation(
                r.name,
                p,
                rows,
                task_metric(p["task"], p.get("wug_metric", "spearman")),
                r.rows["scores"][0]["task_version"],
                columns.get(p["task"]),
            )
        )
    return out


def build_table(workdir: Path, receipts: list[Receipt], params: dict):
    """(PaperTable, score records) from the evaluate receipts given (cdhpc.results.table)."""
    return results_table.build_table(evaluations(workdir, receipts), params)


def publish(
    workdir: Path,
    table,
    records,
    out_dir: Path,
    partial: str | None = None,
    eval_specs: list[dict] | None = None,
) -> list[Path]:
    """Write the report into out_dir and publish a copy as workdir/results/ (atomically).
    `partial` (e.g. "3 of 8 evaluate steps done"; None: every score is in) marks every file as
    partial (cdhpc.results.figures.write_report). `eval_specs`: the evaluate steps whose runs' training
    curves go into training.png (cdhpc.results.figures.plot_training)."""
    from cdhpc.lm.metrics import training_curves
    from cdhpc.results.figures import plot_training, write_report

    write_report(out_dir, table, records, partial=partial)
    if eval_specs:
        wd = Workdir(workdir)
        curves = training_curves(lambda name, key: wd.step_dir("pretrain", name, key), eval_specs)
        plot_training(curves, out_dir / "training.png", partial)
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

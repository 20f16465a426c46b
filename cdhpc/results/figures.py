"""The paper's figures and the report writer: ``delta_rel.png`` (muDeltaREL per method),
``curves.png`` (scores over checkpoints), ``training.png`` (training loss and validation perplexity),
and ``write_report`` (every table and figure of an aggregate step). matplotlib is imported inside
the functions that draw."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdhpc.results.report import (
    TABLE_TASKS,
    Key,
    PaperTable,
    partial_line,
    points_from_scores,
    render_latex,
    render_markdown,
    render_paper_csv,
    render_scores_long,
    task_title,
)


# ----------------------------------------------------------------------------- plots and writers
def _plain_text() -> dict[str, object]:
    """matplotlib settings under which every label is plain text: no mathtext (a ``$`` in a
    method name would be parsed as math and fail), no LaTeX."""
    return {"text.parse_math": False, "text.usetex": False}


def plot_delta_rel(table: PaperTable, path: Path, partial: str | None = None) -> Path:
    """``delta_rel.png``: per task, each method's relative improvement over the baseline (%) with
    its bootstrap CI. Method names are plain text; `partial` titles the plot with `partial_line`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(_plain_text()):
        methods = [m for m in table.methods if m != table.baseline]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(table.tasks)), 4.0))
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            cells = [table.cells.get((m, t)) for t in table.tasks]
            xs = [
                j + (i - (len(methods) - 1) / 2) * width
                for j, c in enumerate(cells)
                if c is not None and c.rel is not None
            ]
            got = [c for c in cells if c is not None and c.rel is not None]
            rel = np.array([c.rel for c in got])
            err = np.array([[c.rel - c.rel_ci_low, c.rel_ci_high - c.rel] for c in got]).T.reshape(2, -1)
            ax.bar(xs, rel, width, yerr=np.clip(err, 0, None), capsize=2, label=m)
        ax.axhline(0, color="black", linewidth=0.8)
        titles = [task_title(t, table.metrics) for t in table.tasks]
        ax.set_xticks(range(len(table.tasks)), titles, rotation=30, ha="right")
        ax.set_ylabel(f"relative improvement vs {table.baseline} (%)")
        ax.legend(fontsize="small")
        if partial is not None:
            ax.set_title(partial_line(partial), fontsize="small", color="tab:red")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return path


def plot_curves(
    points: Mapping[Key, float], path: Path, tasks: Sequence[str] | None = None, partial: str | None = None
) -> Path:
    """``curves.png``: per task, each method's score vs checkpoint step (mean over seeds, band =
    min..max over seeds). Method names are plain text; `partial` titles the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(
        tasks
        or [t for t in TABLE_TASKS if t != "aoa" and any(k[3] == t for k in points)]
        or sorted({k[3] for k in points if k[3] != "aoa"})
    )  # aoa: one value per run, no curve
    cols = min(4, max(1, len(tasks)))
    rows = -(-len(tasks) // cols)
    with matplotlib.rc_context(_plain_text()):
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, task in zip(axes.ravel(), tasks):
            for method in sorted({k[0] for k in points if k[3] == task}):
                by_step: dict[int, list[float]] = {}
                for (m, _, step, t), v in points.items():
                    if m == method and t == task:
                        by_step.setdefault(step, []).append(v)
                steps = sorted(by_step)
                ax.plot(steps, [np.mean(by_step[s]) for s in steps], marker="o", markersize=3, label=method)
                ax.fill_between(
                    steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], alpha=0.15
                )
            ax.set_title(task_title(task))
            ax.set_xlabel("step")
        for ax in axes.ravel()[len(tasks) :]:
            ax.set_visible(False)
        axes.ravel()[0].legend(fontsize="small")
        if partial is not None:
            fig.suptitle(partial_line(partial), fontsize="small", color="tab:red")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return path


def write_report(
    out_dir: Path,
    table: PaperTable,
    records: Iterable[Mapping[str, object]] | None = None,
    names: Mapping[str, str] | None = None,
    partial: str | None = None,
) -> list[Path]:
    """Write ``paper_table.{csv,md,tex}``, ``delta_rel.png`` and, given score records,
    ``scores_long.csv`` and ``curves.png`` into ``out_dir``; returns the paths written.
    `partial` (e.g. "3 of 8 evaluate steps done", None for a complete report) marks every file:
    a first line in the Markdown, a comment and a first row in the LaTeX, a ``partial`` column in
    the CSVs, a title on the plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "paper_table.csv": render_paper_csv(table, partial),
        "paper_table.md": render_markdown(table, names, partial),
        "paper_table.tex": render_latex(table, names, partial),
    }
    records = list(records) if records is not None else None
    if records is not None:
        texts["scores_long.csv"] = render_scores_long(records, partial)
    written = []
    for name, text in texts.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    written.append(plot_delta_rel(table, out_dir / "delta_rel.png", partial))
    if records:
        written.append(plot_curves(points_from_scores(records), out_dir / "curves.png", partial=partial))
    return written


def plot_training(curves: Sequence[Any], path: Path, partial: str | None = None) -> Path | None:
    """``training.png``: training loss and validation perplexity vs tokens seen, one line per run,
    one colour per method (seeds share it). None (nothing written) when no run has metrics.
    `curves`: ``cdhpc.lm.metrics.TrainingCurve`` (run, method, records), from ``training_curves``."""
    curves = [c for c in curves if c.records]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    methods = list(dict.fromkeys(c.method for c in curves))
    colours = {
        m: plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")(i % 20) for i, m in enumerate(methods)
    }
    with matplotlib.rc_context(_plain_text()):
        fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4))
        labelled: set[str] = set()
        for c in curves:
            label = None if c.method in labelled else c.method
            labelled.add(c.method)
            train = [r for r in c.records if r.get("loss") is not None]
            val = [r for r in c.records if r.get("val_ppl") is not None]
            loss_ax.plot(
                [r["tokens"] for r in train],
                [r["loss"] for r in train],
                color=colours[c.method],
                linewidth=0.8,
                alpha=0.8,
                label=label,
            )
            ppl_ax.plot(
                [r["tokens"] for r in val],
                [r["val_ppl"] for r in val],
                color=colours[c.method],
                marker="o",
                markersize=3,
                linewidth=1,
                label=label,
            )
        loss_ax.set(xlabel="tokens seen", ylabel="training loss", title="training loss")
        ppl_ax.set(
            xlabel="tokens seen",
            ylabel="validation perplexity",
            title="validation perplexity (held-out split)",
            yscale="log",
        )
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # log ticks without mathtext
        ppl_ax.yaxis.set_major_formatter(plain)
        ppl_ax.yaxis.set_minor_formatter(plain)
        loss_ax.legend(fontsize="small")
        if partial is not None:
            fig.suptitle(partial_line(partial), fontsize="small", color="tab:red")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return Path(path)

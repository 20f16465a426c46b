"""The paper's tables and plots from scores: one pure aggregation (``build_paper_table``), pure
renderers returning strings (CSV, Markdown, LaTeX), and thin writers (files;
the matplotlib plots are in ``cdhpc.results.figures``).

Layout of the paper (docs/method.md §8.5): one row per method, muDeltaREL first, then per task
"value ± pm", ``*`` when significantly better than the baseline, the best value per column in
bold (perplexity: lowest).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cdhpc.results import meanmax, stats

TABLE_TASKS = (
    "perplexity",
    "blimp",
    "blimp_supplement",
    "entity_tracking",
    "ewok",
    "wug",
    "reading",
    "eye_tracking",
    "wug_past",
    "comps",
    "aoa",
)
"""Column order of the paper's main table (its eight columns first, then the later BabyLM tasks)."""
TASK_TITLES = {
    "perplexity": "Perplexity",
    "blimp": "BLiMP",
    "blimp_supplement": "BLiMP Supp.",
    "entity_tracking": "Entity Tracking",
    "ewok": "EWoK",
    "wug": "WUG",
    "reading": "Reading",
    "eye_tracking": "Eye Tracking",
    "wug_past": "WUG Past",
    "comps": "COMPS",
    "aoa": "AoA",
}
METRIC_MARKS = {"accuracy": "acc.", "spearman": "ρ", "pearson": "r"}
"""How a header names a correlation-scored column's metric (WUG can be either)."""
_LATEX_MARKS = {"accuracy": "acc.", "spearman": r"$\rho$", "pearson": "$r$"}
SCORES_LONG_COLUMNS = ("run", "method", "seed", "step", "task", "score", "metric", "task_version")
Correction = Literal["none", "holm", "bh"]
Key = tuple[str, Hashable, int, str]  # (method, seed, step, task)


@dataclass(frozen=True)
class Cell:
    """One (method, task) cell of the table; the comparison fields are None for the baseline."""

    value: float  # mean-max over seeds (task units)
    pm: float  # std over seeds x resamples / sqrt(n_seeds)
    significant: bool = False  # better than the baseline (CI rule, or adjusted p with a correction)
    p: float | None = None  # one-sided p vs the baseline, adjusted when a correction is set
    ci_low: float | None = None  # percentile CI of baseline - method (task units)
    ci_high: float | None = None
    rel: float | None = None  # relative improvement over the baseline, percent (> 0: better)
    rel_ci_low: float | None = None  # its percentile CI over resamples, percent
    rel_ci_high: float | None = None


@dataclass(frozen=True)
class PaperTable:
    """The results table: rows ``methods`` (baseline first), columns ``tasks``; missing cells
    (a task not evaluated yet) are absent from ``cells``."""

    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell]
    mu_delta_rel: Mapping[str, float]  # percent, non-baseline methods with all seven tasks
    baseline: str = "baseline"
    lower_is_better: tuple[str, ...] = ("perplexity",)
    metrics: Mapping[str, str] = field(default_factory=dict)  # task -> metric, named in headers


# ----------------------------------------------------------------------------- aggregation
def _task_cells(
    results: Mapping[str, meanmax.MeanMaxResult],
    task: str,
    baseline: str,
    lower: bool,
    ties: stats.Ties,
    ci: float,
    rng: np.random.Generator | None,
) -> dict[str, Cell]:
    if baseline not in results:
        raise KeyError(
            f"task {task!r}: no scores for the baseline method {baseline!r}; methods: {sorted(results)}"
        )
    base = results[baseline]
    cells = {baseline: Cell(base.value, base.pm)}
    tails = [50 * (1 - ci), 50 * (1 + ci)]
    base_mean = base.per_seed_vectors.mean(axis=0)
    # a relative change is a share of the baseline: defined for a positive one only (a correlation
    # can be 0 or negative, as AoA's or WUG's Spearman often is on small models)
    relative = base.value > 0 and bool(np.all(base_mean > 0))
    for method, res in results.items():
        if method == baseline:
            continue
        cmp = meanmax.compare(base.per_seed_vectors, res.per_seed_vectors, not lower, ties, ci, rng)
        rel = low = high = None
        if relative:
            sign = -1.0 if lower else 1.0
            rel_vec = 100.0 * sign * (res.per_seed_vectors.mean(axis=0) - base_mean) / base_mean
            low, high = (float(v) for v in np.percentile(rel_vec, tails))
            rel = meanmax.relative_change(res.value, base.value, lower)
        cells[method] = Cell(res.value, res.pm, cmp.better, cmp.p, cmp.ci_low, cmp.ci_high, rel, low, high)
    return cells


def _correct(
    cells: dict[tuple[str, str], Cell], correction: Correction, ci: float
) -> dict[tuple[str, str], Cell]:
    """Adjust every p-value of the table as one family; significance becomes adjusted p < (1-ci)/2."""
    if correction == "none":
        return cells
    adjust = {"holm": meanmax.holm, "bh": meanmax.benjamini_hochberg}.get(correction)
    if adjust is None:
        raise ValueError(f"stats correction must be one of none|holm|bh, got {correction!r}")
    keys = [k for k, c in cells.items() if c.p is not None]
    adjusted = adjust(np.array([cells[k].p for k in keys])) if keys else []
    out = dict(cells)
    for key, p in zip(keys, adjusted):
        c = cells[key]
        out[key] = Cell(
            c.value,
            c.pm,
            bool(p < (1 - ci) / 2),
            float(p),
            c.ci_low,
            c.ci_high,
            c.rel,
            c.rel_ci_low,
            c.rel_ci_high,
        )
    return out


def build_paper_table(
    vectors: Mapping[Key, np.ndarray],
    points: Mapping[Key, float],
    baseline: str = "baseline",
    tasks: Sequence[str] = TABLE_TASKS,
    methods: Sequence[str] | None = None,
    ties: stats.Ties = "against",
    correction: Correction = "none",
    ci: float = 0.95,
    lower_is_better: Sequence[str] = ("perplexity",),
    rng: np.random.Generator | None = None,
    delta_tasks: Sequence[str] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> PaperTable:
    """The whole aggregation of docs/method.md §8 as one pure function.

    ``vectors``/``points``: per (method, seed, step, task) the bootstrap vector (B,) on the
    shared index sets and the point value. Per task: mean-max over checkpoints and seeds, paired
    comparison with the baseline, relative change; muDeltaREL over the seven paper tasks.
    ``rng`` switches on the two-level (seeds, then items) bootstrap. ``delta_tasks``: the tasks
    averaged into muDeltaREL (default: the paper's seven, among ``tasks``). ``metrics``: each
    task's metric (cdhpc.evals.task_metric), named in the headers where a task can have several.
    """
    cells: dict[tuple[str, str], Cell] = {}
    for task in tasks:
        keys = [k for k in points if k[3] == task]
        task_vectors = {k[:3]: vectors[k] for k in keys}
        results = meanmax.mean_max(
            task_vectors, {k[:3]: points[k] for k in keys}, task not in lower_is_better
        )
        if not results:
            continue
        task_cells = _task_cells(results, task, baseline, task in lower_is_better, ties, ci, rng)
        cells.update({(m, task): c for m, c in task_cells.items()})
    cells = _correct(cells, correction, ci)
    seen = sorted({m for m, _ in cells} - {baseline})
    order = tuple(methods) if methods is not None else (baseline, *seen)
    values = {m: {t: c.value for (mm, t), c in cells.items() if mm == m} for m in order}
    paper = [t for t in (stats.PAPER_TASKS if delta_tasks is None else delta_tasks) if t in tasks]
    complete = {m: v for m, v in values.items() if all(t in v for t in paper)}
    if baseline in complete and any(complete[baseline][t] <= 0 for t in paper):
        complete = {}  # a relative change against a baseline <= 0 is undefined: no muDeltaREL
    mu = (
        meanmax.mu_delta_rel(complete, baseline, paper, lower_is_better)
        if paper and baseline in complete
        else {}
    )
    return PaperTable(order, tuple(tasks), cells, mu, baseline, tuple(lower_is_better), dict(metrics or {}))


def points_from_scores(records: Iterable[Mapping[str, object]]) -> dict[Key, float]:
    """Point values keyed (method, seed, step, task) from ``scores_long`` records."""
    return {(str(r["method"]), r["seed"], int(r["step"]), str(r["task"])): float(r["score"]) for r in records}


# ----------------------------------------------------------------------------- rendering
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)")


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula: text starting with = + - @ tab or CR
    gets a leading ``'`` (OWASP); plain numbers, negative ones included, stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    text = repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _csv_field(text: str) -> str:
    """A field quoted as csv.writer quotes it (QUOTE_MINIMAL), and also when it holds a bare \\r,
    which csv.writer with a \\n line terminator would leave unquoted (a reader sees a new row)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]], partial: str | None = None) -> str:
    """CSV text, escaped cells (`csv_cell`); with `partial`, a last column ``partial`` holding it
    in every row."""
    extra = [] if partial is None else [partial]
    lines = [[csv_cell(h) for h in header] + (["partial"] if extra else [])]
    lines += [[csv_cell(v) for v in row] + [csv_cell(p) for p in extra] for row in rows]
    return "".join(",".join(map(_csv_field, line)) + "\n" for line in lines)


def paper_table_header(tasks: Sequence[str]) -> list[str]:
    """Columns of ``paper_table.csv``."""
    per_task = ("", "_pm", "_sig", "_p", "_ci_low", "_ci_high")
    return ["method", "mu_delta_rel"] + [f"{t}{suffix}" for t in tasks for suffix in per_task]


def render_paper_csv(table: PaperTable, partial: str | None = None) -> str:
    """``paper_table.csv``: one row per method; empty cells where there is no value. `partial`
    (e.g. "3 of 8 evaluate steps done"): a last column ``partial`` holding it."""
    rows = []
    for m in table.methods:
        row: list[object] = [m, table.mu_delta_rel.get(m)]
        for t in table.tasks:
            c = table.cells.get((m, t))
            row += (
                [None] * 6
                if c is None
                else [c.value, c.pm, c.significant if c.p is not None else None, c.p, c.ci_low, c.ci_high]
            )
        rows.append(row)
    return _csv(paper_table_header(table.tasks), rows, partial)


def render_scores_long(records: Iterable[Mapping[str, object]], partial: str | None = None) -> str:
    """``scores_long.csv``: one row per run x checkpoint x task, sorted; `partial` as in
    `render_paper_csv`."""
    rows = []
    for i, r in enumerate(records):
        missing = [c for c in SCORES_LONG_COLUMNS if c not in r]
        if missing:
            raise KeyError(f"score record {i} lacks {missing}; has {sorted(r)}")
        rows.append([r[c] for c in SCORES_LONG_COLUMNS])
    rows.sort(
        key=lambda row: tuple((0, v, "") if isinstance(v, numbers.Real) else (1, 0, str(v)) for v in row)
    )
    return _csv(SCORES_LONG_COLUMNS, rows, partial)


def _best(table: PaperTable, task: str, digits: int = 2) -> set[str]:
    """Methods whose displayed value is the best of the column (ties all bold)."""
    shown = {m: round(c.value, digits) for (m, t), c in table.cells.items() if t == task}
    if not shown:
        return set()
    target = min(shown.values()) if task in table.lower_is_better else max(shown.values())
    return {m for m, v in shown.items() if v == target}


def _best_mu(table: PaperTable) -> set[str]:
    shown = {m: round(v, 2) for m, v in table.mu_delta_rel.items()}
    return {m for m, v in shown.items() if v == max(shown.values())} if shown else set()


def task_title(task: str, metrics: Mapping[str, str] | None = None, latex: bool = False) -> str:
    """A column's title; a correlation or a WUG column names its metric: "WUG (acc.)", "AoA (r)"."""
    title = TASK_TITLES.get(task, task)
    title = latex_escape(title) if latex else title
    metric = (metrics or {}).get(task)
    if metric in METRIC_MARKS and (metric != "accuracy" or task == "wug"):
        title += f" ({(_LATEX_MARKS if latex else METRIC_MARKS)[metric]})"
    return title


_MARKDOWN_SPECIAL = set("\\`*_[]<>|&$~")


def markdown_escape(text: str) -> str:
    """Text shown as itself in a Markdown (GFM) table cell: punctuation that would format, link,
    open HTML, start math or end the cell is backslash-escaped; a line break is ``<br>``, other
    control characters a space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for ch in text:
        if ch in _MARKDOWN_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("<br>")
        else:
            out.append(ch if ch.isprintable() else " ")
    return "".join(out)


def partial_line(partial: str) -> str:
    """The mark a partial report carries in its text files."""
    return f"PARTIAL: {partial}; mean-max over the checkpoints evaluated so far"


def render_markdown(
    table: PaperTable, names: Mapping[str, str] | None = None, partial: str | None = None
) -> str:
    """The table in Markdown: "value ± pm", ``\\*`` when significant, best per column in bold.
    Method names are text (`markdown_escape`); `partial` puts `partial_line` before the table."""
    names = names or {}
    arrows = ["↓" if t in table.lower_is_better else "↑" for t in table.tasks]
    titles = [f"{task_title(t, table.metrics)} {a}" for t, a in zip(table.tasks, arrows)]
    header = ["Name", "μΔREL ↑", *titles]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    best = {t: _best(table, t) for t in table.tasks}
    for m in table.methods:
        mu = table.mu_delta_rel.get(m)
        mu_text = "-" if mu is None else f"{mu:.2f}%"
        row = [markdown_escape(names.get(m, m)), f"**{mu_text}**" if m in _best_mu(table) else mu_text]
        for t in table.tasks:
            c = table.cells.get((m, t))
            text = "-" if c is None else f"{c.value:.2f} ± {c.pm:.2f}"
            if c is not None and m in best[t]:
                text = f"**{text}**"
            row.append(text + ("\\*" if c is not None and c.significant else ""))
        lines.append("| " + " | ".join(row) + " |")
    head = [partial_line(partial), ""] if partial is not None else []
    return "\n".join(head + lines) + "\n"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def latex_escape(text: str) -> str:
    """Text shown as itself inside a LaTeX tabular cell: specials escaped (``<``, ``>`` and ``|``
    too, which the default font would print as other glyphs); a line break or other control
    character is a space (an empty line would end the paragraph inside the tabular)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch if ch.isprintable() else " ") for ch in text)


def render_latex(
    table: PaperTable, names: Mapping[str, str] | None = None, partial: str | None = None
) -> str:
    """The table as a booktabs ``tabular``: ``$v \\pm pm$``, ``^{*}`` when significant, bold best.
    `partial`: a comment line and a first row, both `partial_line`, so a typeset draft shows it."""
    names = names or {}
    arrows = [r"$\downarrow$" if t in table.lower_is_better else r"$\uparrow$" for t in table.tasks]
    header = ["Name", r"$\mu\Delta_{\mathrm{REL}}$ $\uparrow$"] + [
        f"{task_title(t, table.metrics, latex=True)} {a}" for t, a in zip(table.tasks, arrows)
    ]
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule"]
    if partial is not None:
        mark = latex_escape(partial_line(partial))
        lines = (
            [f"% {mark}"]
            + lines
            + [rf"\multicolumn{{{len(header)}}}{{l}}{{\textbf{{{mark}}}}} \\", r"\midrule"]
        )
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    best = {t: _best(table, t) for t in table.tasks}
    for m in table.methods:
        mu = table.mu_delta_rel.get(m)
        mu_text = "--" if mu is None else f"{mu:.2f}\\%"
        row = [latex_escape(names.get(m, m)), rf"\textbf{{{mu_text}}}" if m in _best_mu(table) else mu_text]
        for t in table.tasks:
            c = table.cells.get((m, t))
            if c is None:
                row.append("--")
                continue
            body = rf"{c.value:.2f} \pm {c.pm:.2f}"
            body = rf"\mathbf{{{body}}}" if m in best[t] else body
            row.append(f"${body}" + ("^{*}" if c.significant else "") + "$")
        lines.append(" & ".join(row) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"

"""Method names are text in every export format (Markdown, LaTeX, CSV, plots), and a partial
export says so inside every file it writes."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest

from cdhpc.results import figures, report

NAMES = ("$\\x{$", "a|b", "line\nbreak", "50%_&#")
TASKS = ("perplexity", "blimp")
PARTIAL = "3 of 8 evaluate steps done"


@pytest.fixture(scope="module")
def table_and_records():
    """The baseline and the four awkward names, 2 seeds x 2 steps x 2 tasks."""
    rng = np.random.default_rng(0)
    vectors, points, records = {}, {}, []
    for i, method in enumerate(("baseline",) + NAMES):
        for seed in (1, 2):
            for step in (500, 1000):
                for task in TASKS:
                    value = (30.0 - i if task == "perplexity" else 60.0 + i) + seed
                    key = (method, seed, step, task)
                    vectors[key], points[key] = value + rng.normal(0, 0.5, 8), value
                    records.append(
                        {
                            "run": f"{method}-s{seed}",
                            "method": method,
                            "seed": seed,
                            "step": step,
                            "task": task,
                            "score": value,
                            "metric": "x",
                            "task_version": "1",
                        }
                    )
    return report.build_paper_table(vectors, points, tasks=TASKS), records


def _cells(line: str) -> list[str]:
    """A GFM table row split at its unescaped pipes (a backslash escapes the next character)."""
    assert line.startswith("|") and line.endswith("|"), line
    cells, cell, chars = [], "", iter(line[1:-1])
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars)
        elif ch == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    return cells + [cell]


def _unescape(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell.strip().replace("<br>", "\n"))


def test_markdown_rows_keep_their_columns_and_names(table_and_records):
    table, _ = table_and_records
    lines = report.render_markdown(table).splitlines()
    assert len(lines) == 2 + len(table.methods)  # header, rule, one line per method
    widths = {len(_cells(line)) for line in lines}
    assert widths == {2 + len(TASKS)}
    assert [_unescape(_cells(line)[0]) for line in lines[2:]] == list(table.methods)
    assert sorted(table.methods) == sorted(("baseline", *NAMES))


def _unescaped(text: str, ch: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(ch)}", text))


def test_latex_escapes_names_and_stays_balanced(table_and_records):
    table, _ = table_and_records
    tex = report.render_latex(table)
    body = tex.splitlines()
    assert len(body) == 6 + len(table.methods)  # begin, toprule, header, midrule, rows, bottomrule, end
    assert _unescaped(tex, "{") == _unescaped(tex, "}") and _unescaped(tex, "$") % 2 == 0
    assert _unescaped(tex, "%") == 0 and _unescaped(tex, "#") == 0
    assert _unescaped(tex, "&") == (1 + len(table.methods)) * (1 + len(TASKS))  # separators only
    rows = {line.split(" & ")[0] for line in body[4:-2]}
    assert rows == {"baseline", r"\$\textbackslash{}x\{\$", r"a\textbar{}b", "line break", r"50\%\_\&\#"}


def test_csv_quotes_line_breaks_and_keeps_cells(table_and_records):
    table, records = table_and_records
    odd = [{**records[0], "method": "cr\ronly"}, {**records[1], "method": "=1+1\nx"}]
    for text, column, want in (
        (report.render_paper_csv(table), "method", list(table.methods)),
        (report.render_scores_long(odd), "method", ["'=1+1\nx", "cr\ronly"]),
    ):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert [r[column] for r in rows] == want
        assert all(None not in r and None not in r.values() for r in rows)


@pytest.mark.slow
def test_plots_take_any_name(table_and_records, tmp_path):
    table, records = table_and_records
    written = figures.write_report(tmp_path, table, records)
    for png in ("curves.png", "delta_rel.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(written) == 6


@pytest.mark.slow
def test_a_partial_report_says_so_in_every_file(table_and_records, tmp_path):
    from jobs.aggregate import publish

    table, records = table_and_records
    mark = f"PARTIAL: {PARTIAL}"
    publish(tmp_path / "work", table, records, tmp_path / "out", partial=PARTIAL)
    results = tmp_path / "work" / "results"
    assert sorted(p.name for p in results.iterdir()) == [
        "curves.png",
        "delta_rel.png",
        "paper_table.csv",
        "paper_table.md",
        "paper_table.tex",
        "scores_long.csv",
    ]
    assert (results / "paper_table.md").read_text().startswith(mark)
    tex = (results / "paper_table.tex").read_text()
    assert tex.startswith(f"% {mark}") and rf"\textbf{{{mark}" in tex
    for name in ("paper_table.csv", "scores_long.csv"):
        rows = list(csv.DictReader(io.StringIO((results / name).read_text(), newline="")))
        assert rows and all(r["partial"] == PARTIAL for r in rows)
    complete = figures.write_report(tmp_path / "complete", table, records)
    for path in complete:
        if path.suffix != ".png":
            assert "PARTIAL" not in path.read_text() and "partial" not in path.read_text()

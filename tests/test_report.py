"""Known-answer and golden-file tests for cdhpc.results.report.

Golden files live in tests/golden/; regenerate them on purpose with UPDATE_GOLDEN=1.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from cdhpc.results import figures, report

GOLDEN = Path(__file__).parent / "golden"
TASKS = ("perplexity", "blimp", "wug")


def _hand_example():
    """2 methods x 2 seeds x 2 steps x 3 tasks, B = 4; the expected cells are worked out below."""
    raw = {
        # (method, seed, step, task): (point, vector)
        ("baseline", 1, 500, "blimp"): (60, [60, 61, 59, 60]),
        ("baseline", 1, 1000, "blimp"): (62, [62, 63, 61, 62]),  # chosen
        ("baseline", 2, 500, "blimp"): (64, [64, 64, 64, 64]),  # chosen
        ("baseline", 2, 1000, "blimp"): (63, [63, 63, 63, 63]),
        ("cd", 1, 500, "blimp"): (66, [66, 67, 65, 66]),  # chosen
        ("cd", 1, 1000, "blimp"): (65, [65, 65, 65, 65]),
        ("cd", 2, 500, "blimp"): (64, [64, 64, 64, 64]),
        ("cd", 2, 1000, "blimp"): (66, [66, 66, 66, 66]),  # chosen
        ("baseline", 1, 500, "perplexity"): (30, [30, 30, 30, 30]),
        ("baseline", 1, 1000, "perplexity"): (25, [25, 26, 24, 25]),  # chosen (lowest)
        ("baseline", 2, 500, "perplexity"): (28, [28, 28, 28, 28]),
        ("baseline", 2, 1000, "perplexity"): (24, [24, 24, 24, 24]),  # chosen
        ("cd", 1, 500, "perplexity"): (26, [26, 26, 26, 26]),
        ("cd", 1, 1000, "perplexity"): (23, [23, 23, 23, 23]),  # chosen
        ("cd", 2, 500, "perplexity"): (26, [26, 26, 26, 26]),
        ("cd", 2, 1000, "perplexity"): (22, [22, 22, 22, 22]),  # chosen
    }
    for seed in (1, 2):
        for step in (500, 1000):
            raw[("baseline", seed, step, "wug")] = (50, [50, 50, 50, 50])
            raw[("cd", seed, step, "wug")] = (45, [45, 45, 45, 45])
    vectors = {k: np.array(v, float) for k, (_, v) in raw.items()}
    points = {k: float(p) for k, (p, _) in raw.items()}
    return vectors, points


def test_build_paper_table_known_answer():
    vectors, points = _hand_example()
    table = report.build_paper_table(vectors, points, tasks=TASKS)
    assert table.methods == ("baseline", "cd")
    base, cd = table.cells[("baseline", "blimp")], table.cells[("cd", "blimp")]
    assert base.value == pytest.approx(63.0) and base.p is None and not base.significant
    assert base.pm == pytest.approx(np.std([62, 63, 61, 62, 64, 64, 64, 64]) / np.sqrt(2))
    # seed-averaged: baseline [63, 63.5, 62.5, 63], cd [66, 66.5, 65.5, 66] -> diff -3 everywhere
    assert cd.value == pytest.approx(66.0)
    assert (cd.ci_low, cd.ci_high, cd.p, cd.significant) == pytest.approx((-3.0, -3.0, 0.2, True))
    assert cd.rel == pytest.approx(100 * 3 / 63)
    assert cd.rel_ci_low == pytest.approx(100 * 3 / 63.5, rel=1e-3)  # smallest of 3/63, 3/63.5, 3/62.5
    ppl = table.cells[("cd", "perplexity")]
    assert table.cells[("baseline", "perplexity")].value == pytest.approx(24.5)
    assert ppl.value == pytest.approx(22.5) and ppl.significant and ppl.p == pytest.approx(0.2)
    assert ppl.rel == pytest.approx(100 * 2 / 24.5)  # lower perplexity is an improvement
    wug = table.cells[("cd", "wug")]
    assert (wug.value, wug.p, wug.significant, wug.rel) == pytest.approx((45.0, 1.0, False, -10.0))
    # muDeltaREL over the paper tasks present (blimp, wug); perplexity excluded
    assert table.mu_delta_rel == {"cd": pytest.approx((100 * 3 / 63 - 10.0) / 2)}


def test_build_paper_table_corrections_and_ties():
    vectors, points = _hand_example()
    holm = report.build_paper_table(vectors, points, tasks=TASKS, correction="holm")
    # p = 0.2 (perplexity), 0.2 (blimp), 1.0 (wug): Holm -> 0.6, 0.6, 1.0; nothing below 0.025
    assert [holm.cells[("cd", t)].p for t in TASKS] == pytest.approx([0.6, 0.6, 1.0])
    assert not any(holm.cells[("cd", t)].significant for t in TASKS)
    bh = report.build_paper_table(vectors, points, tasks=TASKS, correction="bh")
    assert [bh.cells[("cd", t)].p for t in TASKS] == pytest.approx([0.3, 0.3, 1.0])
    strict = report.build_paper_table(vectors, points, tasks=TASKS, ties="strict")
    assert strict.cells[("cd", "wug")].p == pytest.approx(1.0)  # the baseline strictly wins everywhere
    with pytest.raises(ValueError, match="none\\|holm\\|bh"):
        report.build_paper_table(vectors, points, tasks=TASKS, correction="bonferroni")


def test_build_paper_table_needs_the_baseline():
    vectors, points = _hand_example()
    with pytest.raises(KeyError, match="control"):
        report.build_paper_table(vectors, points, baseline="control", tasks=TASKS)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} changed; regenerate with UPDATE_GOLDEN=1 if on purpose"
    )


def test_rendered_tables_match_golden():
    vectors, points = _hand_example()
    table = report.build_paper_table(vectors, points, tasks=TASKS, metrics={"wug": "accuracy"})
    names = {"baseline": "Baseline", "cd": "CD-Early-500"}
    _check_golden("paper_table.md", report.render_markdown(table, names))
    _check_golden("paper_table.tex", report.render_latex(table, names))
    _check_golden("paper_table_header.csv", ",".join(report.paper_table_header(report.TABLE_TASKS)) + "\n")
    assert report.render_paper_csv(table).splitlines()[0] == ",".join(report.paper_table_header(TASKS))


def test_a_baseline_at_or_below_zero_has_no_relative_change():
    """A correlation column (AoA, WUG as Spearman) whose baseline is 0 or negative: the table
    still builds, the comparison and p stand, the relative change and muDeltaREL are undefined."""
    vectors, points = _hand_example()
    for k in [k for k in points if k[3] == "wug"]:
        base = k[0] == "baseline"
        vectors[k] = np.array([0.0, 0.1, -0.1, 0.0]) if base else np.array([0.3, 0.2, 0.4, 0.3])
        points[k] = 0.0 if base else 0.3
    table = report.build_paper_table(vectors, points, tasks=TASKS, delta_tasks=("blimp", "wug"))
    cell = table.cells[("cd", "wug")]
    assert cell.rel is None and cell.rel_ci_low is None and cell.p is not None
    assert table.mu_delta_rel == {}
    assert "| - |" in report.render_markdown(table)


def test_headers_name_the_metric_of_correlation_columns():
    assert report.task_title("wug", {"wug": "accuracy"}) == "WUG (acc.)"
    assert report.task_title("wug", {"wug": "spearman"}) == "WUG (ρ)"
    assert report.task_title("aoa", {"aoa": "pearson"}) == "AoA (r)"
    assert report.task_title("blimp", {"blimp": "accuracy"}) == "BLiMP"


def test_markdown_marks_best_and_significance():
    vectors, points = _hand_example()
    md = report.render_markdown(report.build_paper_table(vectors, points, tasks=TASKS))
    cd_row = md.splitlines()[3]
    assert "**22.50 ± 0.35**\\*" in cd_row  # best (lowest) perplexity, significant
    assert "| 45.00 ± 0.00 |" in cd_row  # wug: worse, not bold, no mark
    assert "| -2.62% |" in cd_row or "| **-2.62%** |" in cd_row


def test_paper_csv_row_values():
    vectors, points = _hand_example()
    lines = report.render_paper_csv(report.build_paper_table(vectors, points, tasks=TASKS)).splitlines()
    base, cd = (line.split(",") for line in lines[1:])
    assert base[:2] == ["baseline", ""] and base[2:8] == ["24.5", "0.5", "", "", "", ""]
    assert cd[0] == "cd" and float(cd[1]) == pytest.approx((100 * 3 / 63 - 10) / 2)
    assert cd[2] == "22.5" and float(cd[3]) == pytest.approx(0.5 / np.sqrt(2))  # std(23 x4, 22 x4)/sqrt(2)
    assert cd[4:8] == ["1", "0.2", "1.5375", "2.4625"]  # percentiles of sorted [1.5, 2, 2, 2.5]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+cmd", "'+cmd"),
        ("-foo", "'-foo"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("-3.5", "-3.5"),
        ("+1e-3", "+1e-3"),
        (-2.25, "-2.25"),
        (float("-inf"), "-inf"),
        (-7, "-7"),
        (None, ""),
        (True, "1"),
    ],
)
def test_csv_cell_escapes_formulas_but_keeps_numbers(value, expected):
    assert report.csv_cell(value) == expected


def test_scores_long_rows_sorted_and_escaped():
    records = [
        {
            "run": "cd-s2",
            "method": "cd",
            "seed": 10,
            "step": 1000,
            "task": "blimp",
            "score": 61.5,
            "metric": "accuracy",
            "task_version": "1",
        },
        {
            "run": "cd-s1",
            "method": "cd",
            "seed": 9,
            "step": 500,
            "task": "blimp",
            "score": -0.5,
            "metric": "accuracy",
            "task_version": "=1+1",
        },
    ]
    lines = report.render_scores_long(records).splitlines()
    assert lines[0] == "run,method,seed,step,task,score,metric,task_version"
    assert lines[1] == "cd-s1,cd,9,500,blimp,-0.5,accuracy,'=1+1"
    assert lines[2] == "cd-s2,cd,10,1000,blimp,61.5,accuracy,1"
    with pytest.raises(KeyError, match="task_version"):
        report.render_scores_long([{k: v for k, v in records[0].items() if k != "task_version"}])


@pytest.mark.slow  # matplotlib: over a second
def test_write_report_files(tmp_path):
    vectors, points = _hand_example()
    table = report.build_paper_table(vectors, points, tasks=TASKS)
    records = [
        {
            "run": f"{m}-{s}",
            "method": m,
            "seed": s,
            "step": st,
            "task": t,
            "score": v,
            "metric": "x",
            "task_version": "1",
        }
        for (m, s, st, t), v in points.items()
    ]
    written = figures.write_report(tmp_path, table, records)
    names = sorted(p.name for p in written)
    assert names == [
        "curves.png",
        "delta_rel.png",
        "paper_table.csv",
        "paper_table.md",
        "paper_table.tex",
        "scores_long.csv",
    ]
    for png in ("curves.png", "delta_rel.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.points_from_scores(records) == points

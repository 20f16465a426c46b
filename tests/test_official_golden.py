"""`cdhpc eval` against the official BabyLM 2025 pipeline's own outputs (commit bf55c11, CPU).

tests/golden/babylm2025/ holds a tiny Llama whose GPT-2-style tokenizer adds no BOS, toy data in the
official layout, and what the official code wrote for them (README there): per-candidate summed
log-probs of the sentence tasks and the official result folders. The console script runs in a
subprocess, as a user runs it; the defaults must give the official numbers item for item.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "babylm2025"
OFFICIAL = GOLDEN / "official"
# our task -> (official candidates file stem, official results folder)
CHOICE = {
    "blimp": ("blimp_filtered", "blimp/blimp_filtered"),
    "blimp_supplement": ("supplement_filtered", "blimp/supplement_filtered"),
    "ewok": ("ewok_filtered", "ewok/ewok_filtered"),
    "entity_tracking": ("entity_tracking", "entity_tracking/entity_tracking"),
    "wug": ("wug_adj_nominalization", "wug_adj/wug_adj_nominalization"),
}
TASKS = list(CHOICE) + ["reading", "eye_tracking"]

pytestmark = pytest.mark.slow


def _eval(out: Path, tasks: list[str], *extra: str) -> subprocess.CompletedProcess:
    cdhpc = shutil.which("cdhpc")
    assert cdhpc, "the cdhpc console script is not installed (pip install -e .)"
    return subprocess.run(
        [
            cdhpc,
            "eval",
            "--model",
            str(GOLDEN / "model"),
            "--tasks",
            ",".join(tasks),
            "--data",
            str(GOLDEN / "evaluation_data"),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "out"
    proc = _eval(out, TASKS)
    assert proc.returncode == 0, proc.stderr
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_uid_index(records: list[dict], uid_key: str) -> dict[tuple[str, int], dict]:
    """Records keyed (uid, n-th of that uid): file order within a UID is the same in both, and the
    official ids are `<uid>_<n>`."""
    seen: Counter = Counter()
    out = {}
    for r in records:
        out[r[uid_key], seen[r[uid_key]]] = r
        seen[r[uid_key]] += 1
    return out


def _report(path: Path) -> dict[str, dict[str, str]]:
    """best_temperature_report.txt as {section: {name: printed value}} (line order aside)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:], {})
        elif current is not None and line.strip():
            name, _, value = line.rpartition(": ")
            current[name or "value"] = value
    return sections


@pytest.mark.parametrize("task", list(CHOICE))
def test_every_candidate_and_decision_matches(ours: Path, task: str):
    stem, _ = CHOICE[task]
    official = _by_uid_index(_jsonl(OFFICIAL / f"{stem}.candidates.jsonl"), "uid")
    mine = _by_uid_index(_jsonl(ours / task / "predictions.jsonl"), "uid")
    assert mine.keys() == official.keys()
    worst = 0.0
    for key, o in official.items():
        m = mine[key]
        worst = max(worst, max(abs(a - b) for a, b in zip(m["scores"], o["logprobs"])))
        official_pick = max(range(len(o["logprobs"])), key=o["logprobs"].__getitem__)
        assert m["pred"] == official_pick, f"{task} {key}: decision differs"
    assert worst < 1e-4, f"{task}: max |log-prob difference| {worst}"


@pytest.mark.parametrize("task", list(CHOICE))
def test_official_files_match(ours: Path, task: str):
    _, folder = CHOICE[task]
    want = json.loads((OFFICIAL / "results" / folder / "predictions.json").read_text())
    got = json.loads((ours / task / "predictions.json").read_text())
    assert got.keys() == want.keys()
    for uid in want:
        w, g = want[uid]["predictions"], got[uid]["predictions"]
        assert [p["id"] for p in g] == [p["id"] for p in w]
        assert [p["pred"] for p in g] == [p["pred"] for p in w]
        for a, b in zip(g, w):
            if "prob" in b:
                assert a["prob"] == pytest.approx(b["prob"], abs=1e-4)
    assert _report(ours / task / "best_temperature_report.txt") == _report(
        OFFICIAL / "results" / folder / "best_temperature_report.txt"
    )


def test_reading_surprisals_and_scores_match(ours: Path):
    want = json.loads((OFFICIAL / "results/reading/predictions.json").read_text())["reading"]["predictions"]
    for task in ("reading", "eye_tracking"):
        got = json.loads((ours / task / "predictions.json").read_text())["reading"]["predictions"]
        assert [p["id"] for p in got] == [p["id"] for p in want]
        for a, b in zip(got, want):
            for k in ("pred", "prev_pred"):
                if math.isnan(b[k]):
                    assert math.isnan(a[k]), f"row {b['id']}: {k}"
                else:
                    assert a[k] == pytest.approx(b[k], abs=1e-4), f"row {b['id']}: {k}"
        for name in ("report.txt", "correlations.txt"):
            assert (ours / task / name).read_text() == (OFFICIAL / "results/reading" / name).read_text()
    for name in ("predictive_power.jsonl", "predictive_power_spillover.jsonl"):
        for a, b in zip(_jsonl(ours / "reading" / name), _jsonl(OFFICIAL / "results/reading" / name)):
            assert a.keys() == b.keys() and a["Predicted variable"] == b["Predicted variable"]
            for k in ("R2", "AIC", "Coefficient", "P-value"):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (name, a["Predicted variable"], k)


def test_summary_scores_equal_the_official_at_printed_precision(ours: Path):
    for task, (_, folder) in CHOICE.items():
        average = _report(OFFICIAL / "results" / folder / "best_temperature_report.txt")
        printed = next(v["value"] for k, v in average.items() if k.startswith("AVERAGE"))
        assert f"{json.loads((ours / task / 'summary.json').read_text())['score']:.2f}" == printed, task
    lines = dict(
        line.split(": ") for line in (OFFICIAL / "results/reading/report.txt").read_text().splitlines()
    )
    for task, label in (("eye_tracking", "EYE TRACKING SCORE"), ("reading", "SELF-PACED READING SCORE")):
        assert f"{json.loads((ours / task / 'summary.json').read_text())['score']:.2f}" == lines[label]


def test_joint_scoring_is_a_different_named_rule(tmp_path):
    """Our joint rule (BOS always, the first word scored, reading words with their space) is an
    option; on a tokenizer without BOS it changes BLiMP log-probs (and here decisions)."""
    proc = _eval(tmp_path / "joint", ["blimp"], "--scoring", "joint")
    assert proc.returncode == 0, proc.stderr
    official = _by_uid_index(_jsonl(OFFICIAL / "blimp_filtered.candidates.jsonl"), "uid")
    mine = _by_uid_index(_jsonl(tmp_path / "joint" / "blimp" / "predictions.jsonl"), "uid")
    diffs = [abs(a - b) for k, o in official.items() for a, b in zip(mine[k]["scores"], o["logprobs"])]
    assert min(diffs) > 1e-3  # every candidate now also pays for its first token
    assert json.loads((tmp_path / "joint" / "blimp" / "summary.json").read_text())["scoring"] == "joint"


def test_every_zero_shot_task_from_the_console_script(tmp_path):
    """README's `cdhpc eval` with the whole zero-shot suite, on toy data in the official layout
    (python -m cdhpc.toydata) and a model it was not trained for: every task writes its official
    files and a finite score."""
    tasks = [
        "blimp",
        "blimp_supplement",
        "ewok",
        "entity_tracking",
        "wug",
        "wug_past",
        "comps",
        "reading",
        "eye_tracking",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.toydata",
            str(tmp_path / "toy"),
            "--train-docs",
            "60",
            "--seed-docs",
            "10",
            "--test-docs",
            "10",
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            shutil.which("cdhpc"),
            "eval",
            "--model",
            str(GOLDEN / "model"),
            "--tasks",
            ",".join(tasks),
            "--data",
            str(tmp_path / "toy" / "evaluation_data"),
            "--out",
            str(tmp_path / "out"),
            "--fast",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr  # transformers' bar, once per task before
    printed = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert printed == tasks
    for task in tasks:
        summary = json.loads((tmp_path / "out" / task / "summary.json").read_text())
        assert math.isfinite(summary["score"]) and summary["scoring"] == "official"
        official = "report.txt" if task in ("reading", "eye_tracking") else "best_temperature_report.txt"
        assert (tmp_path / "out" / task / official).is_file()

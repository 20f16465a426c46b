"""cdhpc.evals.aoa and stats.pearson_bootstrap: known-answer sigmoid fits, curve fitness against
scipy's pearsonr, malformed-file errors, and a differential test against the official BabyLM 2025
AoAEvaluator (loaded from the local mirror of the pipeline; skipped without it)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr

from cdhpc.evals import aoa
from cdhpc.evals.data import EvalDataError
from cdhpc.evals.engine import ScoreRequest
from cdhpc.results import stats

STEPS = [0, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000]
AGES = list(range(16, 31))
CHANCE = math.log2(300_000)
OFFICIAL_REPO = Path("/work/.mirror/babylm+evaluation-pipeline-2025/repo")
OFFICIAL_COMMIT = "bf55c11"


def _sigmoid(x, a, b, c, d):
    return a / (1 + np.exp(-b * (x - c))) + d


def _surprisal(step: float, c: float, a: float = 10.0, b: float = 3.0, d: float = -18.0) -> float:
    """Exact sigmoid curve of -surprisal over log10(step + 1): from 18 nats down to 8."""
    return float(-_sigmoid(np.log10(step + 1.0), a, b, c, d))


def _hand_model_aoa(
    c: float, min_surprisal: float, a: float = 10.0, b: float = 3.0, d: float = -18.0
) -> float:
    threshold = CHANCE - 0.5 * (CHANCE - min_surprisal)
    return c - math.log(a / (-threshold - d) - 1) / b


def _rows(
    curves: dict[str, list[float]],
    contexts: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    step_name=lambda s: s,
) -> list[dict]:
    """Rows of all checkpoints in increasing step order, built with surprisal_rows: per word one
    surprisal per step (list aligned with STEPS), the same for every context plus noise."""
    rng = np.random.default_rng(seed)
    words = list(curves)
    ctx = [[f"context {j} of {w}" for j in range(contexts)] for w in words]
    rows = []
    for k, step in enumerate(STEPS):
        scores = [-(curves[w][k] + noise * rng.standard_normal()) for w in words for _ in range(contexts)]
        rows += aoa.surprisal_rows(step_name(step), words, ctx, scores)
    return rows


def _cdi_csv(path: Path, table: dict[str, list[float]]) -> Path:
    lines = ["word," + ",".join(map(str, AGES))]
    lines += [
        f"{w}," + ",".join("" if math.isnan(p) else f"{p:.17g}" for p in props) for w, props in table.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _logistic(midpoint: float, slope: float = 0.5) -> list[float]:
    return [float(1 / (1 + np.exp(-slope * (age - midpoint)))) for age in AGES]


# ----------------------------------------------------------------------------- fits
def test_model_aoa_of_exact_sigmoid_is_hand_computed():
    surprisals = [_surprisal(s, c=2.0) for s in STEPS]
    got = aoa.model_aoa(surprisals, STEPS)
    assert got == pytest.approx(_hand_model_aoa(2.0, min(surprisals)), abs=1e-6)
    # same curve over two identical contexts per step: the same fit
    assert aoa.model_aoa(
        [s for s in surprisals for _ in range(2)], [s for s in STEPS for _ in range(2)]
    ) == pytest.approx(got, abs=1e-6)


def test_model_aoa_failures_give_none():
    assert aoa.model_aoa([10.0] * len(STEPS), STEPS) is None  # flat: never crosses the threshold
    assert aoa.model_aoa([18.0, 9.0], [0, 100]) is None  # < 3 points
    assert aoa.model_aoa([18.0, math.nan, math.nan], [0, 1, 2]) is None  # 3 counted, 1 left: no fit
    assert aoa.model_aoa([math.nan] * 4, [0, 1, 2, 3]) is None
    surprisals = [_surprisal(s, c=2.0) for s in STEPS]
    # official bounds check on the first and last entries: steps listed backwards never pass
    assert aoa.model_aoa(surprisals[::-1], STEPS[::-1]) is None
    with pytest.raises(ValueError, match="3 surprisals but 2 steps"):
        aoa.model_aoa([1.0, 2.0, 3.0], [0, 1])


def test_child_aoa_of_logistic_is_its_midpoint():
    assert aoa.child_aoa(AGES, _logistic(22.0)) == pytest.approx(22.0, abs=1e-3)
    with_gaps = _logistic(25.0)
    with_gaps[0] = with_gaps[7] = math.nan
    assert aoa.child_aoa(AGES, with_gaps) == pytest.approx(25.0, abs=1e-3)
    assert aoa.child_aoa(AGES, [0.9] * len(AGES)) is None  # known from the start: no crossing
    assert aoa.child_aoa(AGES[:2], [0.1, 0.9]) is None  # < 3 ages
    assert aoa.child_aoa(AGES, [math.nan] * len(AGES)) is None


def test_step_number_follows_official_names():
    assert aoa.step_number("chck_10M") == 10_000_000
    assert aoa.step_number("chck_1m") == 1_000_000
    assert aoa.step_number("step_500") == 500
    assert aoa.step_number("step_2.5k") == 2500
    assert aoa.step_number(7) == 7.0
    assert aoa.step_number("main") is None


# ----------------------------------------------------------------------------- curve fitness
def _fitness_inputs(tmp_path: Path) -> tuple[list[dict], aoa.CdiData, dict[str, float], dict[str, float]]:
    mids = {"dog": 1.6, "cat": 2.0, "ball": 2.3, "milk": 2.7, "shoe": 3.1}
    child_mid = {"dog": 20.0, "cat": 21.0, "ball": 24.5, "milk": 23.0, "shoe": 27.0}
    curves = {w: [_surprisal(s, c) for s in STEPS] for w, c in mids.items()}
    curves["flat"] = [11.0] * len(STEPS)  # in the CDI, no model AoA
    curves["zebra"] = curves["dog"]  # not in the CDI
    table = {w: _logistic(m) for w, m in child_mid.items()} | {"flat": _logistic(22.0)}
    cdi = aoa.read_cdi(_cdi_csv(tmp_path / "cdi_human.csv", table))
    expected_model = {w: _hand_model_aoa(c, min(curves[w])) for w, c in mids.items()}
    return _rows(curves, contexts=2), cdi, expected_model, child_mid


def test_curve_fitness_is_pearson_of_word_aoas(tmp_path):
    rows, cdi, expected_model, child_mid = _fitness_inputs(tmp_path)
    result = aoa.curve_fitness(rows, cdi)
    assert result.words == ("dog", "cat", "ball", "milk", "shoe", "flat")
    assert result.model_aoas[-1] is None and result.child_aoas[-1] == pytest.approx(22.0, abs=1e-3)
    for word, model, child in zip(result.words[:-1], result.model_aoas, result.child_aoas):
        assert model == pytest.approx(expected_model[word], abs=1e-6)
        assert child == pytest.approx(child_mid[word], abs=1e-3)
    r, p = pearsonr(result.model_aoas[:-1], result.child_aoas[:-1])
    assert (result.fitness, result.p_value, result.n_words) == (pytest.approx(r), pytest.approx(p), 5)
    words = list(child_mid)
    assert result.fitness == pytest.approx(
        pearsonr([expected_model[w] for w in words], [child_mid[w] for w in words])[0], abs=1e-5
    )
    rows_out = aoa.word_rows(result)
    assert rows_out[0] == {
        "uid": "aoa",
        "item_id": 0,
        "word": "dog",
        "model_aoa": result.model_aoas[0],
        "child_aoa": result.child_aoas[0],
    }
    point = stats.pearson_bootstrap(
        [r["model_aoa"] for r in rows_out],
        [r["child_aoa"] for r in rows_out],
        np.arange(len(rows_out))[None, :],
    )
    assert point[0] == pytest.approx(result.fitness, abs=1e-12)


def test_curve_fitness_with_fewer_than_3_words_is_zero(tmp_path):
    rows, cdi, _, _ = _fitness_inputs(tmp_path)
    few = [r for r in rows if r["target_word"] in ("dog", "cat", "flat")]
    result = aoa.curve_fitness(few, cdi)
    assert (result.fitness, result.n_words) == (0.0, 2) and math.isnan(result.p_value)
    with pytest.raises(ValueError, match="no surprisal rows"):
        aoa.curve_fitness([], cdi)


# ----------------------------------------------------------------------------- files and rows
def test_load_words_keeps_order_and_drops_single_letters(tmp_path):
    path = tmp_path / "cdi_childes.json"
    data = {
        "zoo": [{"context": " at the"}],
        "a": [{"context": "x"}],
        "I": "never read",
        "dog": [{"context": "the ", "other": 1}, {"context": "a big"}],
        "up": [],
    }
    path.write_text(json.dumps(data))
    assert aoa.load_words(path) == (["zoo", "dog", "up"], [[" at the"], ["the ", "a big"], []])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("[1, 2]", "got list"),
        ("{}", "empty object"),
        ('{"dog": [{"text": "x"}]}', "word 'dog', entry 0: no \"context\""),
        ('{"dog": [{"context": 3}]}', '"context" must be a string'),
        ('{"dog": {"context": "x"}}', "expected a list"),
        ('{"dog": [', "bad JSON"),
    ],
)
def test_load_words_rejects_malformed_files(tmp_path, text, match):
    path = tmp_path / "cdi_childes.json"
    path.write_text(text)
    with pytest.raises(EvalDataError, match=match) as err:
        aoa.load_words(path)
    assert str(path) in str(err.value)


def test_requests_rows_and_json_layout():
    words, contexts = ["dog ", "cat"], [["  the big ", "a"], ["my"]]
    assert aoa.word_requests(words, contexts) == [
        ScoreRequest("the big ", "dog"),
        ScoreRequest("a ", "dog"),
        ScoreRequest("my ", "cat"),
    ]
    rows = aoa.surprisal_rows(500, words, contexts, [-1.5, -2.0, -3.0])
    assert rows[0] == {
        "step": 500,
        "word_count": None,
        "target_word": "dog ",
        "context_id": 0,
        "context": "  the big ",
        "surprisal": 1.5,
    }
    assert [(r["target_word"], r["context_id"], r["surprisal"]) for r in rows[1:]] == [
        ("dog ", 1, 2.0),
        ("cat", 0, 3.0),
    ]
    with pytest.raises(ValueError, match="2 scores for 3"):
        aoa.surprisal_rows(500, words, contexts, [-1.0, -2.0])
    doc = aoa.surprisal_json(rows + aoa.surprisal_rows(1000, words, contexts, [0.0] * 3), "run-a")
    assert doc["metadata"] == {
        "model_name": "run-a",
        "use_bos_only": False,
        "total_steps": 2,
        "completed_steps": 2,
    }
    assert len(doc["results"]) == 6


def test_read_cdi_values_and_errors(tmp_path):
    path = tmp_path / "cdi_human.csv"
    path.write_text("word,lexical_class,16,17,18,31\ndog,nouns,0.1,,0.3,1\nNA,nouns,0.2,0.3,NA,1\n")
    cdi = aoa.read_cdi(path)
    assert cdi.words == ("dog", None) and cdi.ages == (16, 17, 18)
    np.testing.assert_array_equal(cdi.proportions, [[0.1, np.nan, 0.3], [0.2, 0.3, np.nan]])
    assert cdi.row_of("dog") == 0 and cdi.row_of("NA") is None
    path.write_text("word,16,17\ndog,0.1,0.2\ncat,0.1,lots\n")
    with pytest.raises(EvalDataError, match=r"cdi_human.csv:3: column '17' must be a number"):
        aoa.read_cdi(path)
    path.write_text("word,age\ndog,16\n")
    with pytest.raises(EvalDataError, match="cdi_human.csv:1: no age columns"):
        aoa.read_cdi(path)
    path.write_text("lemma,16\ndog,0.1\n")
    with pytest.raises(EvalDataError, match="lacks column"):
        aoa.read_cdi(path)


# ----------------------------------------------------------------------------- bootstrap
def test_pearson_bootstrap_matches_pearsonr_and_official_rules():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x[4], y[9] = np.nan, np.nan
    keep = ~(np.isnan(x) | np.isnan(y))
    point = stats.pearson_bootstrap(x, y, np.arange(30)[None, :])
    assert point[0] == pytest.approx(pearsonr(x[keep], y[keep])[0], abs=1e-12)
    idx = rng.integers(0, 30, size=(50, 30))
    vec = stats.pearson_bootstrap(x, y, idx)
    for b in (0, 17, 49):
        rows = idx[b][keep[idx[b]]]
        assert vec[b] == pytest.approx(pearsonr(x[rows], y[rows])[0], abs=1e-12)
    # < 3 distinct usable items in a resample (None reads as NaN): 0.0, never nan
    few = stats.pearson_bootstrap(
        [1.0, 2.0, None, 4.0],
        [2.0, 1.0, 3.0, None],
        np.array([[0, 1, 2, 3], [0, 1, 3, 3], [0, 0, 1, 1], [0, 0, 0, 0]]),
    )
    np.testing.assert_array_equal(few, [0.0, 0.0, 0.0, 0.0])
    # exactly 3 distinct usable items beside a left-out one: a correlation (the tiny sweep's case:
    # 3 of 60 words fitted), in any order of the draw
    three = stats.pearson_bootstrap(
        [1.0, 2.0, 3.0, None], [1.0, 3.0, 2.0, 5.0], np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    )
    np.testing.assert_allclose(three, [pearsonr([1, 2, 3], [1, 3, 2])[0]] * 2, atol=1e-12)
    xs, ys = [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 3.0]
    repeated = stats.pearson_bootstrap(xs, ys, np.array([[0, 1, 2, 2]]))[0]  # repeats weigh as drawn
    assert repeated == pytest.approx(pearsonr([1.0, 2.0, 3.0, 3.0], [1.0, 2.0, 4.0, 4.0])[0])
    with pytest.raises(ValueError, match="expected"):
        stats.pearson_bootstrap(x, y, idx[:, :5])


# ----------------------------------------------------------------------------- official pipeline
@pytest.fixture(scope="module")
def official_utils(tmp_path_factory):
    """The official evaluation_pipeline/utils.py at bf55c11, imported from a temp copy."""
    if not OFFICIAL_REPO.exists():
        pytest.skip(f"official pipeline mirror not found at {OFFICIAL_REPO}")
    pytest.importorskip("pandas", reason="the official AoAEvaluator reads the CDI with pandas")
    pytest.importorskip("transformers", reason="the official utils.py imports transformers")
    show = ["git", "-C", str(OFFICIAL_REPO), "show", f"{OFFICIAL_COMMIT}:evaluation_pipeline/utils.py"]
    source = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    path = tmp_path_factory.mktemp("official") / "official_aoa_utils.py"
    path.write_text(source)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:  # its import calls logging.basicConfig: keep the test process's logging as it was
        spec = importlib.util.spec_from_file_location("official_aoa_utils", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    return module


@pytest.mark.parametrize("step_name", [lambda s: s, lambda s: f"step_{s}"], ids=["int", "name"])
def test_curve_fitness_equals_official(tmp_path, official_utils, step_name):
    rng = np.random.default_rng(7)
    words = ["dog", "cat", "ball", "milk", "shoe", "juice", "car", "book", "flat", "zebra", "tiny"]
    curves = {w: [_surprisal(s, c) for s in STEPS] for w, c in zip(words, rng.uniform(1.2, 3.4, len(words)))}
    curves["flat"] = [11.0] * len(STEPS)
    table = {
        w: _logistic(m, slope)
        for w, m, slope in zip(words, rng.uniform(18, 28, len(words)), rng.uniform(0.3, 0.9, len(words)))
    }
    table["cat"][3] = table["cat"][10] = math.nan
    table["tiny"] = [math.nan] * 13 + [0.4, 0.6]  # too few ages: no child AoA
    del table["zebra"]
    rows = _rows(curves, contexts=3, noise=0.4, step_name=step_name)
    rows[5]["surprisal"] = math.nan
    path = _cdi_csv(tmp_path / "cdi_human.csv", table)

    ours = aoa.curve_fitness(rows, aoa.read_cdi(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = official_utils.AoAEvaluator(path).compute_curve_fitness({"results": rows})

    both = [
        (w, m, c)
        for w, m, c in zip(ours.words, ours.model_aoas, ours.child_aoas)
        if m is not None and c is not None
    ]
    assert [w for w, _, _ in both] == theirs["valid_words"] and ours.n_words == theirs["n_words"] >= 3
    np.testing.assert_allclose([m for _, m, _ in both], theirs["model_aoas"], rtol=0, atol=1e-6)
    np.testing.assert_allclose([c for _, _, c in both], theirs["child_aoas"], rtol=0, atol=1e-6)
    assert ours.fitness == pytest.approx(theirs["curve_fitness"], abs=1e-6)
    assert ours.p_value == pytest.approx(theirs["p_value"], abs=1e-6)
    assert "flat" in ours.words and "zebra" not in ours.words

    few = [r for r in rows if r["target_word"] in ("dog", "cat", "zebra")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_few = official_utils.AoAEvaluator(path).compute_curve_fitness({"results": few})
    assert (aoa.curve_fitness(few, aoa.read_cdi(path)).fitness, theirs_few["curve_fitness"]) == (0.0, 0.0)

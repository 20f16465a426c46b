"""Known-answer tests for cdhpc.results.stats (docs/method.md §8)."""

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from cdhpc.results import meanmax, stats

# ----------------------------------------------------------------------------- index sets


def test_draws_keyed_by_uid_not_by_order_or_other_uids():
    small = stats.draw_indices({"b": 7, "a": 5}, resamples=20, seed=3)
    more = stats.draw_indices({"z": 9, "a": 5, "c": 11, "b": 7}, resamples=20, seed=3)
    for uid in ("a", "b"):
        np.testing.assert_array_equal(small[uid], more[uid])
    assert small["a"].shape == (20, 5) and small["a"].dtype == np.uint16
    assert small["a"].min() >= 0 and small["a"].max() < 5
    other_seed = stats.draw_indices({"a": 5}, resamples=20, seed=4)
    assert not np.array_equal(small["a"], other_seed["a"])
    # two UIDs of the same size get different draws
    same_size = stats.draw_indices({"x": 50, "y": 50}, resamples=4, seed=0)
    assert not np.array_equal(same_size["x"], same_size["y"])


def test_draws_are_uniform_enough():
    idx = stats.draw_indices({"u": 10}, resamples=5000, seed=0)["u"]
    counts = np.bincount(idx.ravel(), minlength=10)
    assert np.all(np.abs(counts / counts.sum() - 0.1) < 0.005)


@pytest.mark.parametrize("bad", [{"resamples": 0}, {"seed": -1}, {"n": 0}])
def test_draw_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        stats.draw_indices({"u": bad.get("n", 3)}, resamples=bad.get("resamples", 2), seed=bad.get("seed", 0))


def test_import_is_cheap():
    code = (
        "import sys, cdhpc.results.stats; "
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- per-task vectors

# B = 4 explicit resamples of 4 items, checkable by hand.
IDX4 = {"u": np.array([[0, 0, 0, 0], [1, 2, 3, 3], [2, 3, 2, 3], [0, 1, 2, 3]])}
BASE4 = {"u": np.array([1, 1, 0, 0], bool)}
METH4 = {"u": np.array([1, 0, 1, 1], bool)}


def test_accuracy_bootstrap_by_hand():
    np.testing.assert_allclose(stats.accuracy_bootstrap(BASE4, IDX4), [100, 25, 0, 50])
    np.testing.assert_allclose(stats.accuracy_bootstrap(METH4, IDX4), [100, 75, 100, 75])


def test_accuracy_is_macro_mean_over_uids_and_point_estimate():
    correct = {"a": np.array([1, 0], bool), "b": np.array([1, 1, 1, 0], bool)}
    point = stats.accuracy_bootstrap(correct, stats.point_indices({"a": 2, "b": 4}))
    np.testing.assert_allclose(point, [100 * (0.5 + 0.75) / 2])


def test_accuracy_matches_naive_loop():
    rng = np.random.default_rng(0)
    sizes = {f"uid{j}": int(rng.integers(5, 40)) for j in range(6)}
    correct = {u: rng.random(n) < 0.6 for u, n in sizes.items()}
    idx = stats.draw_indices(sizes, resamples=50, seed=1)
    naive = [np.mean([correct[u][idx[u][b]].mean() for u in sizes]) * 100 for b in range(50)]
    np.testing.assert_allclose(stats.accuracy_bootstrap(correct, idx), naive)


def test_accuracy_names_mismatched_uids():
    with pytest.raises(ValueError, match="extra|without"):
        stats.accuracy_bootstrap({"u": np.ones(4, bool), "v": np.ones(4, bool)}, IDX4)
    with pytest.raises(ValueError, match="shape"):
        stats.accuracy_bootstrap({"u": np.ones(5, bool)}, IDX4)


def test_perplexity_bootstrap_by_hand():
    losses = np.array([1.0, 2.0, 3.0])
    idx = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1]])
    np.testing.assert_allclose(stats.perplexity_bootstrap(losses, idx), np.exp([1.0, 2.0, 8 / 3]))
    weighted = stats.perplexity_bootstrap(losses, idx, block_tokens=np.array([1, 1, 2]))
    np.testing.assert_allclose(weighted, np.exp([1.0, 9 / 4, 14 / 5]))


def _reading_columns(n, rng):
    cols = {name: rng.normal(size=n) for name in stats.READING_PREDICTORS + ("surprisal",)}
    signal = 0.5 * cols["length"] + 0.3 * cols["surprisal"] + 0.2 * cols["Subtlex_log10"] * cols["length"]
    for measure in stats.EYE_TRACKING_MEASURES + (stats.READING_MEASURE,):
        cols[measure] = signal + rng.normal(size=n)
    cols["RTgopast"][3] = np.nan  # a missing measurement leaves that row out of both fits
    cols["surprisal"][7] = np.nan  # an unscored word: out of the model fit only (pandas dropna)
    return cols


def _lstsq_score(cols, rows, measure, predictors):
    """Reference: explicit resampled rows, raw (unstandardised) design, numpy.linalg.lstsq."""
    data = {k: np.asarray(v)[rows] for k, v in cols.items()}
    main = [data[p] for p in predictors]
    inter = [main[i] * main[j] for i in range(len(main)) for j in range(i + 1, len(main))]
    base = np.column_stack([np.ones(len(rows))] + main + inter)
    model = np.column_stack([base, data["surprisal"]])

    def r2(x):
        keep = np.isfinite(data[measure]) & np.isfinite(x).all(axis=1)
        y = data[measure][keep]
        beta = np.linalg.lstsq(x[keep], y, rcond=None)[0]
        return 1 - np.sum((y - x[keep] @ beta) ** 2) / np.sum((y - y.mean()) ** 2)

    r2_base, r2_model = r2(base), r2(model)
    return 100 * (r2_model - r2_base) / (1 - r2_base)


def test_regression_matches_lstsq_on_resampled_rows():
    rng = np.random.default_rng(5)
    cols = _reading_columns(60, rng)
    idx = stats.draw_indices({"rows": 60}, resamples=3, seed=9)["rows"]
    eye = stats.regression_bootstrap(cols, idx, "eye_tracking")
    reading = stats.regression_bootstrap(cols, idx, "reading")
    for b in range(3):
        ref_eye = np.mean(
            [
                _lstsq_score(cols, idx[b], m, stats.EYE_TRACKING_PREDICTORS)
                for m in stats.EYE_TRACKING_MEASURES
            ]
        )
        ref_read = _lstsq_score(cols, idx[b], stats.READING_MEASURE, stats.READING_PREDICTORS)
        assert eye[b] == pytest.approx(ref_eye, rel=1e-8)
        assert reading[b] == pytest.approx(ref_read, rel=1e-8)
    point = stats.regression_bootstrap(cols, stats.point_indices({"rows": 60})["rows"], "reading")
    assert point[0] == pytest.approx(
        _lstsq_score(cols, np.arange(60), stats.READING_MEASURE, stats.READING_PREDICTORS)
    )
    assert point[0] > 0  # surprisal carries signal here


def test_regression_rejects_missing_column_and_task():
    cols = _reading_columns(30, np.random.default_rng(0))
    del cols["prev_surprisal"]
    with pytest.raises(KeyError, match="prev_surprisal"):
        stats.regression_bootstrap(cols, np.arange(30)[None], "reading")
    with pytest.raises(ValueError, match="eye_tracking"):
        stats.regression_bootstrap(cols, np.arange(30)[None], "ewok")


# ----------------------------------------------------------------------------- compare


def test_paired_bootstrap_by_hand():
    base = stats.accuracy_bootstrap(BASE4, IDX4)[None]
    meth = stats.accuracy_bootstrap(METH4, IDX4)[None]
    # diff = baseline - method = [0, -50, -100, -25]; sorted [-100, -50, -25, 0]
    res = meanmax.compare(base, meth, higher_is_better=True)
    assert res.diff_mean == pytest.approx(-43.75)
    assert res.ci_low == pytest.approx(-100 + 0.075 * 50)  # numpy's linear percentile
    assert res.ci_high == pytest.approx(-25 + 0.925 * 25)
    assert res.p == pytest.approx(2 / 5)  # the tie at resample 0 counts against the method
    assert res.better
    assert meanmax.compare(base, meth, True, ties="strict").p == pytest.approx(1 / 5)


def test_identical_systems_never_significant():
    vec = np.random.default_rng(0).normal(70, 1, size=(3, 1000))
    res = meanmax.compare(vec, vec.copy(), higher_is_better=True)
    assert (res.ci_low, res.ci_high, res.p, res.better) == (0.0, 0.0, 1.0, False)
    assert meanmax.compare(vec, vec, True, ties="strict").p == pytest.approx(1 / 1001)
    assert meanmax.compare(vec, vec, False).p == 1.0


def test_uniformly_better_gets_minimum_p_in_both_directions():
    idx = stats.draw_indices({"u": 30}, resamples=200, seed=0)
    worse = stats.accuracy_bootstrap({"u": np.zeros(30, bool)}, idx)[None]
    better = stats.accuracy_bootstrap({"u": np.ones(30, bool)}, idx)[None]
    res = meanmax.compare(worse, better, higher_is_better=True)
    assert res.p == pytest.approx(1 / 201) and res.better
    assert meanmax.compare(better, worse, higher_is_better=True).p == 1.0
    # perplexity: lower is better, the method with lower perplexity wins
    ppl_base, ppl_meth = np.full((2, 200), 25.0), np.full((2, 200), 24.0)
    res = meanmax.compare(ppl_base, ppl_meth, higher_is_better=False)
    assert res.p == pytest.approx(1 / 201) and res.better and res.ci_low == pytest.approx(1.0)
    assert not meanmax.compare(ppl_meth, ppl_base, higher_is_better=False).better


def test_two_level_bootstrap():
    rng = np.random.default_rng(0)
    same_seeds = np.tile(rng.normal(size=500), (4, 1))  # all seeds identical: seeds do not matter
    method = same_seeds + 0.1
    one = meanmax.compare(same_seeds, method, True)
    two = meanmax.compare(same_seeds, method, True, rng=np.random.default_rng(1))
    assert (one.ci_low, one.ci_high, one.p) == pytest.approx((two.ci_low, two.ci_high, two.p))
    spread = rng.normal(size=(4, 1)) * 5 + rng.normal(size=(4, 500)) * 0.1  # seed variance dominates
    wide = meanmax.compare(spread, spread[::-1] + 0.5, True, rng=np.random.default_rng(2))
    narrow = meanmax.compare(spread, spread[::-1] + 0.5, True)
    assert wide.ci_high - wide.ci_low > 5 * (narrow.ci_high - narrow.ci_low)


def test_compare_rejects_bad_ties():
    with pytest.raises(ValueError, match="ties"):
        meanmax.compare(np.zeros((1, 3)), np.zeros((1, 3)), True, ties="authors")


# ----------------------------------------------------------------------------- mean-max, muDeltaREL


def test_mean_max_picks_best_checkpoint_per_seed_and_direction():
    point = {
        ("m", 1, 500): 30.0,
        ("m", 1, 1000): 25.0,
        ("m", 1, 1500): 27.0,
        ("m", 2, 500): 26.0,
        ("m", 2, 1000): 28.0,
        ("m", 2, 1500): 26.0,
    }
    vectors = {k: np.array([v, v + 2.0]) for k, v in point.items()}
    low = meanmax.mean_max(vectors, point, higher_is_better=False)["m"]  # perplexity
    assert low.best_steps == {1: 1000, 2: 500}  # seed 2 ties at 500 and 1500: earliest wins
    assert low.value == pytest.approx(25.5)
    np.testing.assert_allclose(low.per_seed_vectors, [[25, 27], [26, 28]])
    assert low.pm == pytest.approx(np.std([25, 27, 26, 28]) / np.sqrt(2))
    high = meanmax.mean_max(vectors, point, higher_is_better=True)["m"]
    assert high.best_steps == {1: 500, 2: 1000} and high.value == pytest.approx(29.0)


def test_mean_max_requires_matching_keys():
    with pytest.raises(ValueError, match="same keys"):
        meanmax.mean_max({("m", 1, 1): np.zeros(2)}, {("m", 1, 2): 0.0}, True)


def test_mu_delta_rel_by_hand():
    values = {
        "baseline": {"blimp": 50.0, "wug": 40.0, "perplexity": 20.0},
        "cd": {"blimp": 55.0, "wug": 38.0, "perplexity": 19.0},
    }
    got = meanmax.mu_delta_rel(values, tasks=("blimp", "wug"))
    assert got == {"cd": pytest.approx((10.0 - 5.0) / 2)}
    with_ppl = meanmax.mu_delta_rel(values, tasks=("blimp", "wug", "perplexity"))
    assert with_ppl["cd"] == pytest.approx((10.0 - 5.0 + 5.0) / 3)  # lower perplexity = +5%
    with pytest.raises(KeyError, match="ewok"):
        meanmax.mu_delta_rel(values, tasks=("blimp", "ewok"))


# ----------------------------------------------------------------------------- corrections


def test_holm_and_bh_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(meanmax.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(meanmax.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(meanmax.holm(np.array([0.5, 0.9])), [1.0, 1.0])


def test_bh_matches_scipy_any_shape():
    p = np.random.default_rng(0).random((4, 7)) ** 3
    adjusted = meanmax.benjamini_hochberg(p)
    assert adjusted.shape == (4, 7)
    np.testing.assert_allclose(adjusted.ravel(), false_discovery_control(p.ravel(), method="bh"))
    with pytest.raises(ValueError, match="p-values"):
        meanmax.holm(np.array([0.1, np.nan]))


def test_bootstrap_benchmark_small_run_agrees_with_naive_peer():
    from cdhpc.benchmarks import bootstrap

    out = bootstrap.run(["--resamples", "40", "--uids", "3", "--items", "25", "--peer-resamples", "10"])
    assert {"bench", "device", "ours", "peer", "ratio", "unit", "peer_measured_resamples"} <= set(out)
    assert out["bench"] == "bootstrap" and out["peer_measured_resamples"] == 10 and out["peer_extrapolated"]
    assert out["max_abs_diff_vs_peer"] < 1e-9


def test_spearman_bootstrap_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.random(40)
    y = np.round(x * 5 + rng.normal(0, 1, 40)) / 11  # ties, like WUG's k/11 ratios
    point = stats.spearman_bootstrap(x, y, np.arange(40)[None, :])
    assert point[0] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    idx = stats.draw_indices({"wug": 40}, resamples=30, seed=1)["wug"]
    vec = stats.spearman_bootstrap(x, y, idx)
    assert vec[7] == pytest.approx(spearmanr(x[idx[7]], y[idx[7]]).statistic, abs=1e-12)

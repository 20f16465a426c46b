"""The paper's aggregation over bootstrap vectors (docs/method.md §8): ``mean_max`` (best checkpoint
per seed, mean over seeds), ``compare`` (paired test against the baseline, optionally two-level),
``relative_change`` and ``mu_delta_rel``, and the multiple-comparison corrections ``holm`` and
``benjamini_hochberg``. Only numpy here: importing this module is cheap."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cdhpc.results.stats import PAPER_TASKS, Ties


# ----------------------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class MeanMaxResult:
    """One table cell before significance: mean over seeds of each seed's best checkpoint."""

    value: float  # mean over seeds of the best checkpoints' point values (task units)
    pm: float  # std over all seeds x resamples / sqrt(n_seeds) (task units)
    best_steps: dict[Hashable, int]  # seed -> chosen checkpoint step
    per_seed_vectors: np.ndarray  # (S, B) bootstrap vectors of the chosen checkpoints, seeds sorted


def mean_max(
    vectors: Mapping[tuple[str, Hashable, int], np.ndarray],
    point: Mapping[tuple[str, Hashable, int], float],
    higher_is_better: bool,
) -> dict[str, MeanMaxResult]:
    """Mean-max per method (docs/method.md §8.2) for one task.

    For each (method, seed) the checkpoint with the best point value (highest, or lowest when
    ``higher_is_better`` is False, e.g. perplexity) is chosen; ties go to the earliest step.
    ``value`` is the mean over seeds of the chosen point values, as the authors report; ``pm`` is
    the population std (ddof=0) over the (seeds x resamples) array divided by sqrt(n_seeds).
    """
    if set(vectors) != set(point):
        diff = sorted(map(str, set(vectors) ^ set(point)))[:5]
        raise ValueError(f"bootstrap vectors and point values must have the same keys; differ at {diff}")
    best: dict[str, dict[Hashable, int]] = {}
    for method, seed, step in sorted(point, key=lambda k: (k[0], str(k[1]), k[2])):
        chosen = best.setdefault(method, {}).get(seed)
        value, current = (
            point[(method, seed, step)],
            None if chosen is None else point[(method, seed, chosen)],
        )
        if current is None or (value > current if higher_is_better else value < current):
            best[method][seed] = step
    out = {}
    for method, steps in best.items():
        seeds = sorted(steps, key=str)
        per_seed = np.stack([np.asarray(vectors[(method, s, steps[s])], dtype=np.float64) for s in seeds])
        out[method] = MeanMaxResult(
            value=float(np.mean([point[(method, s, steps[s])] for s in seeds])),
            pm=float(per_seed.std() / np.sqrt(len(seeds))),
            best_steps={s: steps[s] for s in seeds},
            per_seed_vectors=per_seed,
        )
    return out


@dataclass(frozen=True)
class CompareResult:
    """Paired bootstrap comparison of a method with the baseline on one task."""

    diff_mean: float  # mean over resamples of baseline - method (task units)
    ci_low: float  # percentile CI of baseline - method
    ci_high: float
    p: float  # one-sided: (#resamples where the baseline is at least as good + 1) / (B + 1)
    better: bool  # the CI excludes 0 in the method's favour


def _seed_mean(per_seed: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    per_seed = np.atleast_2d(np.asarray(per_seed, dtype=np.float64))
    if rng is None:
        return per_seed.mean(axis=0)
    seeds, resamples = per_seed.shape
    pick = rng.integers(0, seeds, size=(resamples, seeds))  # one seed resample per item resample
    return per_seed[pick, np.arange(resamples)[:, None]].mean(axis=1)


def compare(
    baseline: np.ndarray,
    method: np.ndarray,
    higher_is_better: bool,
    ties: Ties = "against",
    ci: float = 0.95,
    rng: np.random.Generator | None = None,
) -> CompareResult:
    """Paired bootstrap test of ``method`` against ``baseline``, arrays (S, B) on shared indices.

    Each is averaged over seeds, diff = baseline - method per resample. ``ties="against"``
    counts a tie as the baseline winning (identical systems: p = 1, CI [0, 0]);
    ``ties="strict"`` is the authors' count (ties give p = 1/(B+1)). With ``rng`` the seeds are
    resampled too (two-level bootstrap), independently for the two arrays.
    """
    if ties not in ("against", "strict"):
        raise ValueError(f"ties must be 'against' or 'strict', got {ties!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    base, meth = _seed_mean(baseline, rng), _seed_mean(method, rng)
    if base.shape != meth.shape:
        raise ValueError(f"baseline and method disagree on resamples: {base.shape} vs {meth.shape}")
    diff = base - meth
    signed = diff if higher_is_better else -diff  # > 0: the baseline is better
    wins = np.count_nonzero(signed >= 0 if ties == "against" else signed > 0)
    low, high = np.percentile(diff, [50 * (1 - ci), 50 * (1 + ci)])
    return CompareResult(
        diff_mean=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p=float((wins + 1) / (diff.size + 1)),
        better=bool(high < 0 if higher_is_better else low > 0),
    )


def relative_change(method: float, baseline: float, lower_is_better: bool = False) -> float:
    """Relative improvement in percent: (method - baseline)/baseline, sign flipped when lower is better."""
    if baseline == 0:
        raise ZeroDivisionError("relative change against a baseline score of 0 is undefined")
    sign = -1.0 if lower_is_better else 1.0
    return 100.0 * sign * (method - baseline) / baseline


def mu_delta_rel(
    values: Mapping[str, Mapping[str, float]],
    baseline: str = "baseline",
    tasks: Sequence[str] = PAPER_TASKS,
    lower_is_better: Sequence[str] = ("perplexity",),
) -> dict[str, float]:
    """muDeltaREL in percent per non-baseline method: the mean over ``tasks`` of the relative
    improvement over the baseline (docs/method.md §8.4; perplexity is excluded by default)."""
    if baseline not in values:
        raise KeyError(f"baseline method {baseline!r} not among {sorted(values)}")
    out = {}
    for method, scores in values.items():
        if method == baseline:
            continue
        missing = [t for t in tasks if t not in scores or t not in values[baseline]]
        if missing:
            raise KeyError(f"method {method!r} or baseline lacks tasks {missing} needed for muDeltaREL")
        rel = [relative_change(scores[t], values[baseline][t], t in lower_is_better) for t in tasks]
        out[method] = float(np.mean(rel))
    return out


# ----------------------------------------------------------------------------- corrections
def _check_pvalues(pvalues: np.ndarray) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p-values must lie in [0, 1] (no NaN); got min {np.nanmin(p)}, max {np.nanmax(p)}")
    return p


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error), same shape as the input."""
    p = _check_pvalues(pvalues)
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    scaled = (flat.size - np.arange(flat.size)) * flat[order]
    adjusted = np.empty_like(flat)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.reshape(p.shape)


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), same shape as the input."""
    p = _check_pvalues(pvalues)
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    scaled = flat[order] * flat.size / np.arange(1, flat.size + 1)
    adjusted = np.empty_like(flat)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted.reshape(p.shape)

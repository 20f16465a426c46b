"""Statistics of the paper's tables (docs/method.md §8), as a notebook-friendly pure API.

- Bootstrap index sets are drawn once per (seed, UID) and shared by every method, seed and
  checkpoint, so comparisons are paired over items. Each UID has its own generator derived from
  ``(seed, sha256(UID))``: adding or removing a UID never changes another UID's draws (the
  authors matched index sets to UIDs by dictionary order; we key them by UID).
- Per-task bootstrap vectors (shape ``(B,)``): accuracy (macro-mean over UIDs, x100),
  perplexity (exp of the mean resampled block loss), reading / eye tracking (refit of the OLS
  delta-R^2 on resampled rows, batched as weighted least squares). Passing
  ``point_indices(...)`` instead of drawn indices gives the point estimate (``B = 1``).
- In ``cdhpc.results.meanmax``: ``mean_max`` (best checkpoint per seed, mean over seeds), ``compare`` (paired
test vs the
  baseline), ``mu_delta_rel``, and beyond the paper ``holm``, ``benjamini_hochberg`` and a
  two-level (seeds, then items) bootstrap in ``compare``.

Only numpy here: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Literal

import numpy as np

PAPER_TASKS = ("blimp", "blimp_supplement", "entity_tracking", "ewok", "wug", "reading", "eye_tracking")
"""The seven tasks muDeltaREL averages over (perplexity excluded), docs/method.md §8.4."""
EYE_TRACKING_MEASURES = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
READING_MEASURE = "self_paced_reading_time"
EYE_TRACKING_PREDICTORS = ("Subtlex_log10", "length", "context_length")
READING_PREDICTORS = EYE_TRACKING_PREDICTORS + ("prev_length", "prev_surprisal")
_CHUNK_ELEMENTS = 1 << 22  # temporaries of at most ~32 MB (float64) per chunk of resamples

Ties = Literal["against", "strict"]


# ----------------------------------------------------------------------------- index sets
def uid_seed_sequence(seed: int, uid: str) -> np.random.SeedSequence:
    """The seed sequence of one UID: depends on ``seed`` and the UID's text only."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"bootstrap seed must be a non-negative integer, got {seed!r}")
    words = np.frombuffer(hashlib.sha256(uid.encode("utf-8")).digest()[:16], dtype="<u4")
    return np.random.SeedSequence([int(seed), *(int(w) for w in words)])


def _index_dtype(n: int) -> type:
    # Small index dtypes halve memory and gather time (10,000 x 67,000 uint16 = 1.3 GB).
    return np.uint16 if n <= 1 << 16 else np.uint32 if n <= 1 << 32 else np.int64


def draw_indices(n_by_uid: Mapping[str, int], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap index sets ``{uid: (resamples, n_uid)}`` of item indices drawn with replacement.

    Reading rows and perplexity blocks are one "UID" each. A UID's draw depends only on
    ``(seed, uid, n_uid, resamples)`` and the numpy version; save the arrays to reuse them.
    """
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    for uid, n in n_by_uid.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"UID {uid!r}: item count must be a positive integer, got {n!r}")

    def draw(uid: str) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64DXSM(uid_seed_sequence(seed, uid)))
        n = n_by_uid[uid]
        return rng.integers(0, n, size=(resamples, n), dtype=_index_dtype(n))

    return dict(zip(n_by_uid, _map_uids(draw, list(n_by_uid))))


def _map_uids(fn, uids: list[str]) -> list:
    """fn over UIDs on every core: each UID has its own generator and numpy's fills and gathers
    release the GIL; results come back in input order, so sums over them stay deterministic."""
    if len(uids) < 2 or (os.cpu_count() or 1) < 2:
        return [fn(u) for u in uids]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(fn, uids))


def point_indices(n_by_uid: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Identity "index sets" ``{uid: (1, n_uid)}``: the bootstrap functions then return the
    point estimate (no resampling) as a vector of length 1."""
    return {uid: np.arange(n)[None, :] for uid, n in n_by_uid.items()}


def _check_indices(name: str, idx: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[1] != n:
        raise ValueError(f"{name}: index set has shape {idx.shape}, expected (resamples, {n}) for {n} items")
    return idx


def _row_chunks(resamples: int, n: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return [slice(i, min(i + step, resamples)) for i in range(0, resamples, step)]


# ----------------------------------------------------------------------------- per-task vectors
def accuracy_bootstrap(correct_by_uid: Mapping[str, np.ndarray], idx: Mapping[str, np.ndarray]) -> np.ndarray:
    """Bootstrap vector (B,) of the task accuracy in percent: per resample, the unweighted mean
    over UIDs of each UID's accuracy on its resampled items (BabyLM's macro mean)."""
    missing, extra = set(correct_by_uid) - set(idx), set(idx) - set(correct_by_uid)
    if missing or extra:
        raise ValueError(
            f"UIDs without index sets: {sorted(missing)}; index sets without scores: {sorted(extra)}"
        )
    if not correct_by_uid:
        raise ValueError("accuracy_bootstrap needs at least one UID")
    resamples = {np.shape(i)[0] for i in idx.values()}
    if len(resamples) != 1:
        raise ValueError(f"index sets disagree on the number of resamples: {sorted(resamples)}")
    total = np.zeros(resamples.pop())

    def uid_accuracy(uid: str) -> np.ndarray:
        correct = np.asarray(correct_by_uid[uid], dtype=bool).view(np.uint8)
        rows = _check_indices(f"UID {uid!r}", idx[uid], correct.size)
        # uint32 sums of 0/1 bytes: half the memory traffic of int64, cannot overflow (n < 2**32)
        return np.take(correct, rows).sum(axis=1, dtype=np.uint32) / correct.size

    for acc in _map_uids(uid_accuracy, sorted(correct_by_uid)):
        total += acc
    return 100.0 * total / len(correct_by_uid)


def perplexity_bootstrap(
    block_losses: np.ndarray, idx: np.ndarray, block_tokens: np.ndarray | None = None
) -> np.ndarray:
    """Bootstrap vector (B,) of perplexity: exp(mean resampled per-block loss in nats/token).

    ``block_tokens`` (optional) weights each block by its token count (a short last block);
    without it every block counts equally, as the authors do.
    """
    losses = np.asarray(block_losses, dtype=np.float64)
    idx = _check_indices("perplexity blocks", idx, losses.size)
    weights = np.ones_like(losses) if block_tokens is None else np.asarray(block_tokens, dtype=np.float64)
    out = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], losses.size):
        w = np.take(weights, idx[rows])
        out[rows] = (np.take(losses, idx[rows]) * w).sum(axis=1) / w.sum(axis=1)
    return np.exp(out)


def spearman_bootstrap(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Bootstrap vector (B,) of Spearman's rho between ``x`` and ``y`` on resampled items (ties
    get average ranks, as scipy.stats.spearmanr): WUG's later-pipeline metric, P(candidate 0) vs
    the human ratio."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    idx = _check_indices("spearman items", idx, x.size)
    out = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], x.size):
        rx, ry = rankdata(x[idx[rows]], axis=1), rankdata(y[idx[rows]], axis=1)
        rx -= rx.mean(axis=1, keepdims=True)
        ry -= ry.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant resample has no correlation: nan
            out[rows] = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    return out


def pearson_bootstrap(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Bootstrap vector (B,) of Pearson's r between ``x`` and ``y`` on resampled items: AoA's
    curve fitness, model AoA (log10 step) vs child AoA (months).

    Items with a NaN (a failed fit; ``None`` reads as NaN) in ``x`` or ``y`` are left out of each
    resample; a resample with fewer than 3 distinct usable items scores 0.0, the official rule
    for fewer than 3 words (a draw that repeats one word is not a correlation: counting repeats
    would make it a constant sample, whose r is undefined).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson items: x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    idx = _check_indices("pearson items", idx, x.size)
    usable = ~(np.isnan(x) | np.isnan(y))
    x, y = np.where(usable, x, 0.0), np.where(usable, y, 0.0)
    out = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], x.size):
        keep = usable[idx[rows]]
        m = keep.sum(axis=1)
        ordered = np.sort(np.where(keep, idx[rows], -1), axis=1)  # left out: -1, first
        distinct = (np.diff(ordered, axis=1, prepend=-1) != 0).sum(axis=1)  # each usable index once
        xs, ys = x[idx[rows]], y[idx[rows]]
        with np.errstate(invalid="ignore", divide="ignore"):  # fewer than 3 distinct items: replaced by 0
            dx = np.where(keep, xs - xs.sum(1, keepdims=True) / m[:, None], 0.0)
            dy = np.where(keep, ys - ys.sum(1, keepdims=True) / m[:, None], 0.0)
            r = (dx * dy).sum(1) / np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
        out[rows] = np.where(distinct < 3, 0.0, np.clip(r, -1.0, 1.0))
    return out


def interaction_design(columns: Mapping[str, np.ndarray], predictors: Sequence[str]) -> np.ndarray:
    """Design (n, 1 + k + k(k-1)/2): intercept, main effects and all pairwise interactions.

    Main effects are standardised first; with an intercept and all main effects in the model the
    interactions of standardised columns span the same space as the raw ones, so R^2 is
    unchanged while the normal equations stay well conditioned.
    """
    z = []
    for name in predictors:
        col = np.asarray(columns[name], dtype=np.float64)
        finite = np.isfinite(col)
        mu, sd = col[finite].mean(), col[finite].std()
        z.append((col - mu) / (sd if sd > 0 else 1.0))
    inter = [a * b for a, b in combinations(z, 2)]
    return np.column_stack([np.ones(len(z[0]))] + z + inter)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    offsets = (np.arange(idx.shape[0], dtype=np.int64) * n)[:, None]
    flat = np.bincount((idx.astype(np.int64) + offsets).ravel(), minlength=idx.shape[0] * n)
    return flat.reshape(idx.shape[0], n).astype(np.float64)


def _weighted_r2(
    gram: np.ndarray, xy: np.ndarray, yy: np.ndarray, sy: np.ndarray, w: np.ndarray
) -> np.ndarray:
    try:
        beta = np.linalg.solve(gram, xy[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a degenerate resample: minimum-norm solution instead
        beta = (np.linalg.pinv(gram) @ xy[..., None])[..., 0]
    ssr = yy - np.einsum("bp,bp->b", beta, xy)
    sst = yy - sy**2 / w
    return 1.0 - ssr / sst


def _fit_terms(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-row terms of the normal equations; rows outside ``keep`` are zeroed (weight 0)."""
    x, y = np.where(keep[:, None], x, 0.0), np.where(keep, y, 0.0)
    outer = (x[:, :, None] * x[:, None, :]).reshape(len(y), -1)
    return keep.astype(np.float64), outer, x * y[:, None], y * y, y


def _r2_batch(counts: np.ndarray, terms: tuple[np.ndarray, ...]) -> np.ndarray:
    """R^2 of the OLS fit per row of ``counts`` (B, n), each row a weighting by multiplicity."""
    keep, outer, xy_rows, yy_rows, y = terms
    c = counts * keep
    p = xy_rows.shape[1]
    return _weighted_r2((c @ outer).reshape(-1, p, p), c @ xy_rows, c @ yy_rows, c @ y, c.sum(axis=1))


def delta_r2_bootstrap(
    columns: Mapping[str, np.ndarray], idx: np.ndarray, measure: str, predictors: Sequence[str]
) -> np.ndarray:
    """Bootstrap vector (B,) of 100*(R2_model - R2_base)/(1 - R2_base) for one reading measure.

    Base: OLS ``measure ~ predictors + their pairwise interactions``; model: base + surprisal.
    Each resample is the OLS on the resampled rows, computed exactly as least squares weighted
    by each row's multiplicity. Rows with a missing value are dropped per fit, as the BabyLM
    pipeline's ``dropna`` does (a row lacking only its surprisal stays in the base fit).
    """
    needed = (measure, "surprisal", *predictors)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise KeyError(f"reading data lacks columns {missing}; has {sorted(columns)}")
    y = np.asarray(columns[measure], dtype=np.float64)
    n = len(y)
    idx = _check_indices(f"reading rows ({measure})", idx, n)
    surprisal = np.asarray(columns["surprisal"], dtype=np.float64)
    base_x = interaction_design(columns, predictors)
    keep_base = np.isfinite(y) & np.isfinite(base_x).all(axis=1)
    y = y - y[keep_base].mean()  # centring keeps the normal equations well conditioned
    base = _fit_terms(base_x, y, keep_base)
    model = _fit_terms(np.column_stack([base_x, surprisal]), y, keep_base & np.isfinite(surprisal))
    out = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], n):
        counts = _counts(idx[rows], n)
        r2_base, r2_model = _r2_batch(counts, base), _r2_batch(counts, model)
        out[rows] = 100.0 * (r2_model - r2_base) / (1.0 - r2_base)
    return out


def regression_bootstrap(
    columns: Mapping[str, np.ndarray], idx: np.ndarray, task: Literal["reading", "eye_tracking"]
) -> np.ndarray:
    """Bootstrap vector (B,) of the reading or eye-tracking score (docs/method.md §8.1).

    ``columns``: the rows of ``reading_data.csv`` by column name plus ``surprisal`` and
    ``prev_surprisal`` (nats or bits: R^2 does not care). Eye tracking is the mean over the four
    RT measures; self-paced reading adds prev_length and prev_surprisal to the base model.
    """
    if task == "eye_tracking":
        scores = [delta_r2_bootstrap(columns, idx, m, EYE_TRACKING_PREDICTORS) for m in EYE_TRACKING_MEASURES]
        return np.mean(scores, axis=0)
    if task == "reading":
        return delta_r2_bootstrap(columns, idx, READING_MEASURE, READING_PREDICTORS)
    raise ValueError(f"regression task must be 'reading' or 'eye_tracking', got {task!r}")

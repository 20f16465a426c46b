"""The reading tasks' statistics, as the BabyLM 2025 pipeline's reading/run.py computes them with
statsmodels: OLS fits of each measure on a baseline of word frequency, length and context length
(and, for self-paced reading, the previous word's length and surprisal) with all pairwise
interactions, with and without the word's surprisal (`pred`). Rows with a NaN in the fitted
columns are dropped per fit (pandas dropna). The score of a measure is the share of the variance
the baseline leaves unexplained that surprisal explains: 100 * (R2_model - R2_base) / (1 - R2_base).

Eye tracking: the mean of that over RTfirstfix, RTfirstpass, RTgopast, RTrightbound (baseline
without the previous word). Self-paced reading: self_paced_reading_time, baseline with it.
Also the official side files: Pearson correlations of `pred` with every measure
(correlations.txt) and per-measure coefficient, t, p, R2, AIC (predictive_power*.jsonl). Pure numpy
and scipy; statistics in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

EYE_MEASURES = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SPR_MEASURE = "self_paced_reading_time"
ERP_MEASURES = ("ELAN", "LAN", "N400", "P600", "EPNP", "PNP")
VARIABLES = EYE_MEASURES + (SPR_MEASURE,) + ERP_MEASURES
"""Every measure the official pipeline fits, in its order (the ERP columns are optional here)."""
BASE_EYE = ("Subtlex_log10", "length", "context_length")
BASE_SPR = ("Subtlex_log10", "length", "context_length", "prev_length", "prev_pred")


@dataclass(frozen=True)
class OlsFit:
    """What statsmodels' OLS reports that the pipeline reads: the last column's coefficient, its
    t value and two-sided p value, R^2 (centred: the design holds an intercept) and AIC."""

    coef: float
    t: float
    p: float
    rsquared: float
    aic: float


def ols(y: np.ndarray, x: np.ndarray) -> OlsFit:
    """Least squares of y on x (x holds an intercept column); statistics of x's last column.
    AIC = -2 log-likelihood + 2 rank(x), as statsmodels (Gaussian errors, MLE variance)."""
    from scipy.stats import t as student_t

    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    ssr = float(resid @ resid)
    centered = y - y.mean()
    n = len(y)
    df_resid = n - rank
    scale = ssr / df_resid if df_resid > 0 else math.nan
    se = math.sqrt(scale * np.linalg.pinv(x.T @ x)[-1, -1])
    t = float(beta[-1]) / se if se > 0 else math.nan
    p = float(2 * student_t.sf(abs(t), df_resid)) if math.isfinite(t) else math.nan
    llf = -n / 2 * (math.log(2 * math.pi) + math.log(ssr / n) + 1)
    return OlsFit(float(beta[-1]), t, p, 1.0 - ssr / float(centered @ centered), -2 * llf + 2 * int(rank))


def _design(columns: Mapping[str, np.ndarray], names: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """Intercept, main effects and all pairwise interactions of `names` on the selected rows."""
    cols = [np.asarray(columns[n], dtype=float)[rows] for n in names]
    inter = [cols[i] * cols[j] for i in range(len(cols)) for j in range(i + 1, len(cols))]
    return np.column_stack([np.ones(int(rows.sum()))] + cols + inter)


def _complete(columns: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    rows = np.ones(len(next(iter(columns.values()))), dtype=bool)
    for n in names:
        rows &= ~np.isnan(np.asarray(columns[n], dtype=float))
    return rows


def fit_measure(
    columns: Mapping[str, np.ndarray],
    measure: str,
    base: tuple[str, ...],
) -> tuple[OlsFit, OlsFit]:
    """(baseline fit, model fit) of one measure; `columns` holds the measure, the baseline
    predictors and `pred` (surprisal). Each fit drops its own incomplete rows."""
    y = np.asarray(columns[measure], dtype=float)
    base_rows = _complete(columns, (measure,) + base)
    model_rows = _complete(columns, (measure, "pred") + base)
    baseline = ols(y[base_rows], _design(columns, base, base_rows))
    x_model = np.column_stack(
        [_design(columns, base, model_rows), np.asarray(columns["pred"], dtype=float)[model_rows]]
    )
    return baseline, ols(y[model_rows], x_model)


def delta_r2(baseline: OlsFit, model: OlsFit) -> float:
    """100 * (R2_model - R2_base) / (1 - R2_base)."""
    return 100.0 * (model.rsquared - baseline.rsquared) / (1.0 - baseline.rsquared)


def power_row(measure: str, baseline: OlsFit, model: OlsFit) -> dict[str, float | str]:
    """One line of predictive_power(_spillover).jsonl, with the official keys."""
    return {
        "Predicted variable": measure,
        "Coefficient": model.coef,
        "Number of standard deviations": model.t,
        "P-value": model.p,
        "R2": model.rsquared,
        "Change in R2 from baseline": model.rsquared - baseline.rsquared,
        "AIC": model.aic,
        "Change in AIC from baseline": model.aic - baseline.aic,
    }


@dataclass(frozen=True)
class ReadingResult:
    """Both reading scores and the official side files' content."""

    eye_tracking: float
    self_paced: float
    per_measure: dict[str, float]  # delta-R^2 of each RT measure (eye) and of SPR (spillover model)
    power: list[dict]
    power_spillover: list[dict]
    correlations: dict[str, float]


def reading_scores(
    columns: Mapping[str, np.ndarray],
    pred: np.ndarray,
    prev_pred: np.ndarray,
) -> ReadingResult:
    """Fit every measure present as the official reading/run.py does (eye tracking and SPR)."""
    cols = dict(columns)
    cols["pred"], cols["prev_pred"] = np.asarray(pred, dtype=float), np.asarray(prev_pred, dtype=float)
    present = [v for v in VARIABLES if v in cols]
    power, spill, per = [], [], {}
    for v in present:
        base, model = fit_measure(cols, v, BASE_EYE)
        power.append(power_row(v, base, model))
        if v in EYE_MEASURES:
            per[v] = delta_r2(base, model)
    for v in present:
        base, model = fit_measure(cols, v, BASE_SPR)
        spill.append(power_row(v, base, model))
        if v == SPR_MEASURE:
            per[v] = delta_r2(base, model)
    eye = [per[m] for m in EYE_MEASURES if m in per]
    return ReadingResult(
        sum(eye) / len(eye) if eye else math.nan,
        per.get(SPR_MEASURE, math.nan),
        per,
        power,
        spill,
        {v: pearson_complete(cols["pred"], cols[v]) for v in present},
    )


def pearson_complete(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r over the rows where both are present (pandas DataFrame.corr)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 2:
        return math.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])

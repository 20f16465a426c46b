"""Reading (self-paced reading) and eye tracking: per-word surprisal and OLS delta-R^2.

Surprisal of a word = -log P(" " + word | BOS + item) in nats, where `item` is the text before the
word (the official reader passes `item` as the context); a multi-token word is the chain of its
pieces scored jointly, with the spacing the text has. The official reader instead re-tokenizes
item + decode(piece) per piece (losing the space) and uses the literal context "None" where pandas
reads `item` as NaN: **quirks** not reproduced. `prev_word` is scored the same way given
`prev_item` (NaN where prev_item is empty).

Scores (as the 2025 pipeline's reading/run.py): for each measure, 100 * (R2_model - R2_base) /
(1 - R2_base), OLS with intercept. Eye tracking: base = Subtlex_log10, length, context_length and
their pairwise interactions, mean over RTfirstfix, RTfirstpass, RTgopast, RTrightbound.
Self-paced reading: base adds prev_length and prev surprisal, all pairwise interactions of the five.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cdhpc.evals.data import parse_float, read_csv
from cdhpc.evals.engine import ScoreRequest
from cdhpc.evals.task import Task

VERSION = "reading-2025.1"

EYE_MEASURES = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SPR_MEASURES = ("self_paced_reading_time",)
BASE_EYE = ("Subtlex_log10", "length", "context_length")
BASE_SPR = BASE_EYE + ("prev_length", "prev_surprisal")
REQUIRED_EYE = ("item", "word") + BASE_EYE + EYE_MEASURES
REQUIRED_SPR = ("item", "word", "prev_item", "prev_word") + BASE_EYE + ("prev_length",) + SPR_MEASURES


def word_request(item: str, word: str) -> ScoreRequest:
    """P(word | item): the word follows the item after one space (none for an empty item)."""
    sep = "" if not item or item.endswith(" ") else " "
    return ScoreRequest(item, sep + word)


def load_rows(path: Path, kind: str) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
    """Raw rows and the numeric columns (float arrays, NaN where empty) of the reading CSV."""
    required = REQUIRED_EYE if kind == "eye_tracking" else REQUIRED_SPR
    rows = read_csv(path, required)
    numeric = [c for c in required if c not in ("item", "word", "prev_item", "prev_word")]
    columns = {c: np.array([parse_float(r[c], path, i + 2, c) for i, r in enumerate(rows)])
               for c in numeric}
    return rows, columns


def reading_requests(rows: list[dict[str, str]], kind: str) -> tuple[list[ScoreRequest], list[int], list[int]]:
    """Unique requests (one per distinct item + word) and, per row, the index of its word's
    request and of its previous word's (-1: none)."""
    index: dict[tuple[str, str], int] = {}

    def ref(item: str, word: str) -> int:
        return index.setdefault((item, word), len(index))

    word_idx = [ref(r["item"], r["word"]) for r in rows]
    prev_idx = [ref(r["prev_item"], r["prev_word"]) if kind == "reading" and r["prev_item"].strip()
                else -1 for r in rows]
    reqs = [word_request(item, word) for item, word in index]
    return reqs, word_idx, prev_idx


def _design(columns: Mapping[str, np.ndarray], names: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """Intercept, main effects and all pairwise interactions of `names` on the selected rows."""
    cols = [np.asarray(columns[n], dtype=float)[rows] for n in names]
    inter = [cols[i] * cols[j] for i in range(len(cols)) for j in range(i + 1, len(cols))]
    return np.column_stack([np.ones(rows.sum())] + cols + inter)


def r_squared(y: np.ndarray, x: np.ndarray) -> float:
    """R^2 of the least-squares fit of y on x (x holds an intercept column)."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    centered = y - y.mean()
    return 1.0 - float(resid @ resid) / float(centered @ centered)


def delta_r2(columns: Mapping[str, np.ndarray], surprisal: np.ndarray, measure: str, kind: str,
             prev_surprisal: np.ndarray | None = None) -> float:
    """100 * (R2_model - R2_base) / (1 - R2_base) for one measure (a percentage of the variance
    the baseline leaves unexplained). kind "eye_tracking" or "reading" (the latter needs
    prev_surprisal). Rows with NaN in the fitted columns are dropped per fit, as pandas dropna."""
    if kind not in ("eye_tracking", "reading"):
        raise ValueError(f"kind {kind!r}: allowed are 'eye_tracking', 'reading'")
    cols = dict(columns)
    names = BASE_EYE
    if kind == "reading":
        if prev_surprisal is None:
            raise ValueError("kind 'reading' needs prev_surprisal (its baseline includes it)")
        cols["prev_surprisal"] = prev_surprisal
        names = BASE_SPR
    y = np.asarray(cols[measure], dtype=float)
    base_rows = ~np.isnan(y)
    for n in names:
        base_rows &= ~np.isnan(np.asarray(cols[n], dtype=float))
    model_rows = base_rows & ~np.isnan(surprisal)
    r2_base = r_squared(y[base_rows], _design(cols, names, base_rows))
    x_model = np.column_stack([_design(cols, names, model_rows), surprisal[model_rows]])
    r2_model = r_squared(y[model_rows], x_model)
    return 100.0 * (r2_model - r2_base) / (1.0 - r2_base)


def summarize_reading(kind: str, rows: list[dict[str, str]], columns: dict[str, np.ndarray],
                      scores: list[float], word_idx: list[int], prev_idx: list[int],
                      ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per-word surprisal rows, summary fields and the official files of a reading task."""
    surprisal = np.array([-scores[i] for i in word_idx])
    prev = np.array([-scores[i] if i >= 0 else math.nan for i in prev_idx])
    measures = EYE_MEASURES if kind == "eye_tracking" else SPR_MEASURES
    per_measure = {m: delta_r2(columns, surprisal, m, kind, prev) for m in measures}
    score = sum(per_measure.values()) / len(per_measure)
    out_rows = [{"uid": kind, "item_id": i, "item": r["item"], "word": r["word"],
                 "surprisal": float(surprisal[i]),
                 "prev_surprisal": None if math.isnan(prev[i]) else float(prev[i])}
                for i, r in enumerate(rows)]
    preds = {"reading": {"predictions": [{"id": r["item_id"], "pred": r["surprisal"],
                                          "prev_pred": r["prev_surprisal"]} for r in out_rows]}}
    label = "EYE TRACKING SCORE" if kind == "eye_tracking" else "SELF-PACED READING SCORE"
    official = {"predictions.json": preds, "report.txt": f"{label}: {score:.2f}\n"}
    fields = {"score": score, "per_uid": per_measure, "n_items": len(rows), "metric": "delta_r2"}
    return out_rows, fields, official


TASK = Task("reading", VERSION, "reading", "full_eval/reading", "fast_eval/reading",
            "reading_data.csv", REQUIRED_SPR, metric="delta_r2")

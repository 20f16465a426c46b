"""Age of acquisition (AoA): when a run learns the words children learn, and in the same order?

Chang & Bergen (2022), as the BabyLM 2025 pipeline implements it (commit bf55c11): at every
checkpoint of a run, the surprisal (nats) of each CDI word after each of its CHILDES contexts;
per word one sigmoid learning curve over log10(step + 1); the word's model AoA is where the curve
crosses halfway between "random chance" and the word's minimum surprisal. The child AoA is the
age (months) where a sigmoid fitted to the proportion of children producing the word (CDI) crosses
0.5. The score, "curve fitness", is Pearson's r between model and child AoA over the words with
both.

Files (under the evaluation data directory): `full_eval/aoa/cdi_childes.json`, {word: [{"context":
str, ...}, ...]}, and `full_eval/aoa/cdi_human.csv`, a `word` column and age columns "16".."30"
(proportions, empty where unknown).

Official behaviour reproduced here, odd as some of it is:
- Surprisal is in nats, the "random chance" level is log2(300000) = 18.19 (bits): the threshold
  is 18.19 - 0.5 * (18.19 - min surprisal), mixing the units.
- All (step, context) points of a word are fitted by one sigmoid (no mean over contexts); the
  minimum surprisal is over all points, so one easy context sets it. Points with NaN surprisal are
  dropped, but a word needs >= 3 points counted before that.
- The model fit is unbounded (Levenberg-Marquardt, maxfev 1000) on -surprisal, p0 = [range,
  1, mean log-step, min]; a failed fit, a <= 0 or b <= 0, or a threshold outside the fitted range
  gives no AoA. The model AoA is log10(step + 1) at the crossing, not a step; the crossing step
  must lie between the first and the last entry of the word's step list in row order (not min and
  max): rows must come in increasing step order, as `surprisal_rows` per checkpoint gives them.
  For a noisy word the fit is ill-conditioned and scipy's MINPACK stops at a point that depends on
  the memory layout of its arrays: on identical inputs the official AoA of such a word varies
  between calls (seen: up to 4e-3 in log10 step, scipy 1.17), and so does ours.
- Child fit: ages with a NaN proportion dropped, >= 3 ages, p0 = [1, 0.1, mean age, 0], bounds
  a in [0, 2], b in [0, 1], c in [first age, last age], d in [-0.5, 0.5] (trust-region, 1000
  evaluations); the 0.5 crossing must lie between the first and last valid age.
- A word is matched to the first CDI row with exactly its text; CDI words that pandas reads as
  missing ("NA", "null", "nan", "None", ...) never match. Fewer than 3 words with both AoAs give
  curve fitness 0.0 (p-value nan here; the official result has none). No rows at all is an error.
- Words: JSON keys in file order; keys of <= 1 character are dropped unread; min_context = 0 (the
  default of AoA_word/run.py: eval_aoa.sh sets MIN_CONTEXT=20 but never passes it), so a word
  with no contexts is kept. Text scored: `context.strip() + " "`, then `word.strip()`; rows keep
  the raw context and word, with use_bos_only false. `step` is our optimizer step (the official
  rows hold checkpoint names such as "chck_10M"); `word_count` is None unless the caller knows it.
- Step names: a number is itself; a name's first number, times 1e3/1e6/1e9 when k/m/b (any case)
  follows it, possibly after spaces ("chck_10M" -> 1e7, "step_500" -> 500, "step_5bpe" -> 5e9);
  rows whose step has no number or whose surprisal is not a number are skipped.
Not reproduced: a context that is not a string is an EvalDataError here (the official scorer logs
an error and records NaN).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdhpc.evals.data import MAX_LINE_CHARS, EvalDataError, is_na, parse_float, read_csv, read_text
from cdhpc.evals.engine import ScoreRequest
from cdhpc.evals.task import Task

VERSION = "aoa-2025.1"
WORDS_FILE = "full_eval/aoa/cdi_childes.json"
CDI_FILE = "full_eval/aoa/cdi_human.csv"
AGE_COLUMNS = tuple(str(age) for age in range(16, 31))  # months
CHANCE_VOCAB = 300_000  # the official "approximate vocabulary" of random chance
MAXFEV = 1000  # function evaluations per sigmoid fit
_STEP_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMB]?)", re.IGNORECASE)
_UNITS = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


# ----------------------------------------------------------------------------- words and surprisal
def load_words(path: Path) -> tuple[list[str], list[list[str]]]:
    """Target words (file order, single characters dropped) and each word's contexts, from
    cdi_childes.json ({word: [{"context": str, ...}, ...]}), as the official `load_eval`."""
    path = Path(path)
    text = read_text(path)
    shape = 'a JSON object {word: [{"context": str}, ...]}'
    if not text.strip():
        raise EvalDataError(f"{path}: empty file; expected {shape}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvalDataError(
            f"{path}:{err.lineno}: bad JSON ({err.msg} at column {err.colno}); expected {shape}"
        ) from None
    if not isinstance(data, dict) or not data:
        got = "an empty object" if isinstance(data, dict) else type(data).__name__
        raise EvalDataError(f"{path}: expected {shape}, got {got}")
    words, contexts = [], []
    for word, entries in data.items():
        if len(word) <= 1:
            continue
        if not isinstance(entries, list):
            raise EvalDataError(
                f'{path}: word {word!r}: expected a list of {{"context": str}} '
                f"entries, got {type(entries).__name__}"
            )
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "context" not in entry:
                raise EvalDataError(
                    f'{path}: word {word!r}, entry {i}: no "context" field; each '
                    'entry must be an object with a "context" string'
                )
            if not isinstance(entry["context"], str):
                raise EvalDataError(
                    f'{path}: word {word!r}, entry {i}: "context" must be a string, got {entry["context"]!r}'
                )
            if len(entry["context"]) > MAX_LINE_CHARS:
                raise EvalDataError(
                    f'{path}: word {word!r}, entry {i}: "context" has '
                    f"{len(entry['context']):,} characters; the limit is "
                    f"{MAX_LINE_CHARS:,} (a context is an utterance or a few)"
                )
        words.append(word)
        contexts.append([entry["context"] for entry in entries])
    return words, contexts


def word_requests(words: Sequence[str], contexts: Sequence[Sequence[str]]) -> list[ScoreRequest]:
    """One request per (word, context), words in order, then contexts: the official text,
    `context.strip() + " "` then `word.strip()`. Surprisal (nats) = -score."""
    if len(words) != len(contexts):
        raise ValueError(f"{len(words)} words but {len(contexts)} context lists")
    return [
        ScoreRequest(context.strip() + " ", word.strip())
        for word, word_contexts in zip(words, contexts)
        for context in word_contexts
    ]


def surprisal_rows(
    step: int,
    words: Sequence[str],
    contexts: Sequence[Sequence[str]],
    scores: Sequence[float],
    word_count: int | None = None,
) -> list[dict[str, Any]]:
    """Official surprisal.json result entries of one checkpoint. `scores`: the engine's summed
    log-probs (nats) of `word_requests(words, contexts)`, in that order; surprisal = -score.
    `step` is the optimizer step; `word_count` (words seen, official field) is None unless known."""
    expected = sum(len(c) for c in contexts)
    if len(scores) != expected:
        raise ValueError(f"{len(scores)} scores for {expected} (word, context) requests")
    scores_iter = iter(scores)
    return [
        {
            "step": step,
            "word_count": word_count,
            "target_word": word,
            "context_id": i,
            "context": context,
            "surprisal": -float(next(scores_iter)),
        }
        for word, word_contexts in zip(words, contexts, strict=True)
        for i, context in enumerate(word_contexts)
    ]


def surprisal_json(
    rows: Sequence[dict[str, Any]], model_name: str, total_steps: int | None = None
) -> dict[str, Any]:
    """The official surprisal.json: metadata and the rows of all checkpoints. `total_steps`
    (checkpoints planned) defaults to the number of distinct steps in `rows`."""
    completed = len({r["step"] for r in rows})
    return {
        "metadata": {
            "model_name": model_name,
            "use_bos_only": False,
            "total_steps": completed if total_steps is None else total_steps,
            "completed_steps": completed,
        },
        "results": list(rows),
    }


# ----------------------------------------------------------------------------- CDI
@dataclass(frozen=True, eq=False)
class CdiData:
    """Children's production data (cdi_human.csv)."""

    words: tuple[str | None, ...]  # one per CSV row; None where pandas reads the cell as missing
    ages: tuple[int, ...]  # months of the age columns present, ascending
    proportions: np.ndarray  # (words, ages) share of children producing the word; NaN: empty cell

    def row_of(self, word: str) -> int | None:
        """Index of the first row holding exactly `word` (None: not in the CDI)."""
        return next((i for i, w in enumerate(self.words) if w == word), None)


def read_cdi(path: Path) -> CdiData:
    """The CDI table: `word` and the age columns "16".."30" present (others ignored)."""
    path = Path(path)
    rows = read_csv(path, ("word",))
    ages = [c for c in AGE_COLUMNS if c in rows[0]]
    if not ages:
        raise EvalDataError(
            f"{path}:1: no age columns; expected some of "
            f"{AGE_COLUMNS[0]!r}..{AGE_COLUMNS[-1]!r} (months) besides 'word'"
        )
    proportions = np.array(
        [
            [np.nan if is_na(row[a]) else parse_float(row[a], path, i + 2, a) for a in ages]
            for i, row in enumerate(rows)
        ],
        dtype=np.float64,
    )
    words = tuple(None if is_na(row["word"]) else row["word"] for row in rows)
    return CdiData(words, tuple(int(a) for a in ages), proportions)


# ----------------------------------------------------------------------------- fits
def _sigmoid(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    return a / (1 + np.exp(-b * (x - c))) + d


def _fit(x: np.ndarray, y: np.ndarray, p0: list[float], bounds: tuple | None = None) -> np.ndarray | None:
    """Official sigmoid fit: parameters (a, b, c, d), or None where curve_fit fails."""
    from scipy.optimize import curve_fit

    kwargs = {} if bounds is None else {"bounds": bounds}
    try:
        # Overflow and covariance warnings change nothing (the official run only prints them);
        # silenced so a warnings-as-errors setting cannot turn a good fit into a failed one.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(_sigmoid, x, y, p0=p0, maxfev=MAXFEV, **kwargs)
    except Exception:  # the official rule: any failure of the fit (too few points, no convergence) is no AoA
        return None
    return popt


def _crossing(popt: np.ndarray | None, target: float) -> np.float64 | None:
    """x where the fitted sigmoid reaches `target`; None for a flat/decreasing fit or a target
    outside its range (a + d > target > d)."""
    if popt is None:
        return None
    a, b, c, d = popt
    if b <= 0 or a <= 0 or target <= d or target >= a + d:
        return None
    with np.errstate(all="ignore"):
        return c - np.log(a / (target - d) - 1) / b


def child_aoa(ages: Sequence[int], proportions: Sequence[float], threshold: float = 0.5) -> float | None:
    """Child AoA in months: where a sigmoid fitted to one word's proportions (NaN: unknown) over
    `ages` (months, ascending) reaches `threshold`. None: < 3 known ages or no crossing in range."""
    p = np.asarray(proportions, dtype=np.float64)
    valid = ~np.isnan(p)
    x, y = np.asarray(ages)[valid], p[valid]
    if x.size < 3:
        return None
    bounds = ([0, 0, x[0], -0.5], [2.0, 1.0, x[-1], 0.5])
    aoa = _crossing(_fit(x, y, [1.0, 0.1, np.mean(x), 0.0], bounds), threshold)
    if aoa is None or aoa < x[0] or aoa > x[-1]:
        return None
    return float(aoa)


def model_aoa(surprisals: Sequence[float], steps: Sequence[float], threshold: float = 0.5) -> float | None:
    """Model AoA as log10(step + 1): where a sigmoid fitted to -surprisal (nats) over
    log10(step + 1) crosses `threshold` of the way from log2(300000) ("chance") to the minimum
    surprisal. All points of a word together (steps repeat per context); NaN surprisals dropped."""
    if len(surprisals) != len(steps):
        raise ValueError(f"{len(surprisals)} surprisals but {len(steps)} steps")
    if len(surprisals) < 3:
        return None
    s = np.asarray(surprisals, dtype=np.float64)
    valid = ~np.isnan(s)
    if not valid.any():
        return None
    x_steps, s = np.asarray(steps, dtype=np.float64)[valid], s[valid]
    chance = np.log2(CHANCE_VOCAB)  # official: bits, against surprisals in nats
    target = -(chance - threshold * (chance - s.min()))  # on the -surprisal scale of the fit
    neg = -s
    with np.errstate(all="ignore"):
        log_steps = np.log10(x_steps + 1)
    p0 = [neg.max() - neg.min(), 1.0, np.mean(log_steps), neg.min()]
    log_aoa = _crossing(_fit(log_steps, neg, p0), target)
    if log_aoa is None:
        return None
    with np.errstate(all="ignore"):
        aoa_step = 10**log_aoa - 1
    if aoa_step < x_steps[0] or aoa_step > x_steps[-1]:  # official: first and last entries
        return None
    return float(log_aoa)


def step_number(name: str | int | float) -> float | None:
    """The step of a checkpoint name, as the official `extract_step_number`: a number is itself;
    otherwise the first number in the name, times 1e3/1e6/1e9 for a k/m/b suffix (any case)
    ("chck_10M" -> 1e7, "step_500" -> 500); None when the name has no number."""
    if isinstance(name, (int, float)):
        return float(name)
    match = _STEP_RE.search(str(name))
    if not match:
        return None
    return float(match.group(1)) * _UNITS.get(match.group(2).upper(), 1)


# ----------------------------------------------------------------------------- score
@dataclass(frozen=True)
class AoaResult:
    """Curve fitness of one checkpoint series, with the per-word AoAs behind it."""

    words: tuple[str, ...]  # words of the rows found in the CDI, first-appearance order
    child_aoas: tuple[float | None, ...]  # months; None: no child fit
    model_aoas: tuple[float | None, ...]  # log10(step + 1); None: no model fit
    fitness: float  # Pearson r over words with both AoAs; 0.0 when fewer than 3
    p_value: float  # two-sided p of r; nan when fewer than 3 words
    n_words: int  # words with both AoAs


def _curves(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{word: (steps, surprisals)} in row order; rows without a step number or a numeric
    surprisal are skipped (the word still counts as seen)."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        steps, surprisals = curves.setdefault(row["target_word"], ([], []))
        step = step_number(row["step"])
        try:
            surprisal = float(row["surprisal"])
        except (TypeError, ValueError):
            continue
        if step is not None:
            steps.append(step)
            surprisals.append(surprisal)
    return curves


def curve_fitness(rows: Sequence[dict[str, Any]], cdi: CdiData) -> AoaResult:
    """Official curve fitness of surprisal rows (all checkpoints, increasing step order) against
    the CDI: Pearson r of model AoA (log10 step) with child AoA (months) over words with both."""
    from scipy.stats import pearsonr

    if not rows:
        raise ValueError("no surprisal rows: AoA needs the rows of every checkpoint of the run")
    words, child, model = [], [], []
    for word, (steps, surprisals) in _curves(rows).items():
        index = cdi.row_of(word)
        if index is None:
            continue
        words.append(word)
        child.append(child_aoa(cdi.ages, cdi.proportions[index]))
        model.append(model_aoa(surprisals, steps))
    pairs = [(m, c) for m, c in zip(model, child) if m is not None and c is not None]
    if len(pairs) < 3:
        fitness, p_value = 0.0, float("nan")
    else:
        r, p = pearsonr([m for m, _ in pairs], [c for _, c in pairs])
        fitness, p_value = float(r), float(p)
    return AoaResult(tuple(words), tuple(child), tuple(model), fitness, p_value, len(pairs))


def word_rows(result: AoaResult) -> list[dict[str, Any]]:
    """Per-item predictions (one per CDI-matched word) for the bootstrap, which resamples words
    and takes `stats.pearson_bootstrap(model_aoa, child_aoa, idx)` (None reads as NaN)."""
    return [
        {"uid": "aoa", "item_id": i, "word": w, "model_aoa": m, "child_aoa": c}
        for i, (w, m, c) in enumerate(zip(result.words, result.model_aoas, result.child_aoas))
    ]


TASK = Task("aoa", VERSION, "aoa", "full_eval/aoa", "full_eval/aoa", "cdi_*", metric="pearson")
"""The official data has no fast subset: `set: fast` reads full_eval/aoa too. Run it with
cdhpc.evals.aoa_run (a run's checkpoints, not one model)."""

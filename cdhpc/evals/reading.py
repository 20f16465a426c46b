"""Reading (self-paced reading) and eye tracking: per-word surprisal, then the OLS scores of
cdhpc.evals.regression. Both tasks read `reading/reading_data.csv` and write the official
reading/ folder (prediction.jsonl, predictions.json, correlations.txt, predictive_power.jsonl,
predictive_power_spillover.jsonl, report.txt with both scores); a task's score is its line.

Surprisal of `word` after `item` (the text before it), nats, under the `scoring` option:
- ``official`` (default; reading/evaluation_functions.py `get_p2`, causal): `item` is tokenized as
  the tokenizer does it (a BOS only where it adds one) and the word's first token is the first id of
  `tokenizer(word)` -- the word alone, no leading space. A word of several tokens is scored piece by
  piece: piece k >= 1 is predicted after re-tokenizing `item + decode(piece 0) + ... +
  decode(piece k-1)`, and its id is the first id of `tokenizer(decode(piece k))`. An empty `item`
  (pandas reads it as NaN) is the literal text "None". Probabilities are float32 softmaxes, as there.
- ``joint`` (ours): -log P(" " + word | BOS + item), the word's tokens scored together with the
  spacing the text has; an empty item is no context at all.
`prev_word` given `prev_item` is scored the same way (NaN where prev_item is empty), for every row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cdhpc.evals.data import EvalDataError, is_na, parse_float, read_csv
from cdhpc.evals.engine import ScoreRequest
from cdhpc.evals.regression import BASE_EYE, EYE_MEASURES, SPR_MEASURE, VARIABLES, reading_scores
from cdhpc.evals.task import Task

VERSION = "reading-2025.2"  # 2: official per-piece scoring by default, official side files

REQUIRED_EYE = ("item", "word") + BASE_EYE + EYE_MEASURES
REQUIRED_SPR = ("item", "word", "prev_item", "prev_word") + BASE_EYE + ("prev_length", SPR_MEASURE)
TEXT_COLUMNS = ("item", "word", "prev_item", "prev_word")


def load_rows(path: Path, kind: str) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
    """Raw rows and the numeric columns (float arrays, NaN where missing) of the reading CSV: the
    required ones and whichever of the official ERP measures are present."""
    required = REQUIRED_EYE if kind == "eye_tracking" else REQUIRED_SPR
    rows = read_csv(path, required)
    header = rows[0].keys()
    numeric = [
        c
        for c in dict.fromkeys(required + VARIABLES + ("prev_length",))
        if c in header and c not in TEXT_COLUMNS
    ]
    columns = {c: np.array([parse_float(r[c], path, i + 2, c) for i, r in enumerate(rows)]) for c in numeric}
    for i, r in enumerate(rows):
        if is_na(r["word"]):
            raise EvalDataError(
                f"{path}:{i + 2}: column 'word' is empty or NA ({r['word']!r}); "
                "every row needs the word it times"
            )
    return rows, columns


def word_pairs(
    rows: list[dict[str, str]], scoring: str
) -> tuple[list[tuple[str, str]], list[int], list[int]]:
    """Distinct (context, word) pairs and, per row, the index of its word's pair and of its
    previous word's (-1: no previous word). Official: an empty item is the text "None"."""
    index: dict[tuple[str, str], int] = {}

    def ref(item: str | None, word: str) -> int:
        context = ("None" if scoring == "official" else "") if is_na(item) else item
        return index.setdefault((context, word), len(index))

    word_idx = [ref(r["item"], r["word"]) for r in rows]
    prev_idx = [
        -1 if is_na(r.get("prev_item")) or is_na(r.get("prev_word")) else ref(r["prev_item"], r["prev_word"])
        for r in rows
    ]
    return list(index), word_idx, prev_idx


def joint_request(item: str, word: str) -> ScoreRequest:
    """P(word | item), joint rule: the word follows the item after one space (none for an empty item)."""
    sep = "" if not item or item.endswith(" ") else " "
    return ScoreRequest(item, sep + word)


def official_sequences(tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[Any, Any, np.ndarray]:
    """The official per-piece requests of every pair as token sequences: (n x width) ids (-1 past
    each end; each is tokenizer(context) + [target]), the scored mask (the last token only), and
    the pair each sequence belongs to. Four tokenizer calls in all."""
    words = tokenizer([w for _, w in pairs], add_special_tokens=False)["input_ids"]
    for (context, word), ids in zip(pairs, words):
        if not ids:
            raise EvalDataError(f"reading word {word!r} (after {context!r}) tokenizes to nothing")
    texts = tokenizer.batch_decode([[t] for ids in words for t in ids])
    first = np.zeros(len(texts), dtype=bool)
    first[np.cumsum([0] + [len(ids) for ids in words[:-1]])] = True
    later = [texts[k] for k in np.flatnonzero(~first)]
    retok = tokenizer(later, add_special_tokens=False)["input_ids"] if later else []
    contexts, targets, owner = [], [], []
    k = r = 0
    for p, ((context, word), ids) in enumerate(zip(pairs, words)):
        text = context
        for j, token in enumerate(ids):
            if j == 0:
                target = token
            else:
                if not retok[r]:
                    raise EvalDataError(f"reading word {word!r}: piece {texts[k]!r} re-tokenizes to nothing")
                target, r = retok[r][0], r + 1
            contexts.append(text)
            targets.append(target)
            owner.append(p)
            text += texts[k]
            k += 1
    enc = tokenizer(contexts, add_special_tokens=True)["input_ids"]
    width = max(map(len, enc)) + 1
    full = np.full((len(enc), width), -1, dtype=np.int64)
    scored = np.zeros((len(enc), width), dtype=bool)
    for i, (ids, target) in enumerate(zip(enc, targets)):
        if not ids:
            raise EvalDataError(
                f"reading context {contexts[i]!r} tokenizes to nothing: no position "
                "predicts the word (the official rule needs a context)"
            )
        full[i, : len(ids)] = ids
        full[i, len(ids)] = target
        scored[i, len(ids)] = True
    return full, scored, np.asarray(owner, dtype=np.int64)


def reading_pack(
    tokenizer: Any, pairs: list[tuple[str, str]], scoring: str, *, batch_size: int, max_tokens: int | None
) -> Any:
    """The prepared batches (cdhpc.evals.batches.PreparedPack) of every (context, word) pair under
    the scoring rule: the host work, which the pack cache keeps. Official: one sequence per word
    piece, the pair of each in meta["owner"]. A sequence longer than `max_tokens` raises
    ContextLengthError (rows: the sequence's index)."""
    from cdhpc.evals.batches import prepare_pack
    from cdhpc.evals.engine import check_context, encode_requests

    if scoring == "official":
        full, scored, owner = official_sequences(tokenizer, pairs)
        check_context(full, max_tokens)
        return prepare_pack(full, scored, batch_size, meta={"owner": owner.tolist()})
    full, scored = encode_requests(
        tokenizer, [joint_request(c, w) for c, w in pairs], "joint", max_tokens=max_tokens
    )
    return prepare_pack(full, scored, batch_size)


def pack_surprisals(model: Any, pack: Any, n_pairs: int, device: str) -> np.ndarray:
    """Surprisal (nats) of each pair from its `reading_pack`: minus the log-prob of its word, the
    sum over the word's pieces under the official rule."""
    from cdhpc.evals.batches import score_pack

    logp = np.asarray(score_pack(model, pack, device))
    owner = pack.meta.get("owner")
    if owner is None:
        return -logp
    return -np.bincount(np.asarray(owner, dtype=np.int64), weights=logp, minlength=n_pairs)


def pair_surprisals(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], scoring: str, *, batch_size: int, device: str
) -> np.ndarray:
    """Surprisal (nats) of each (context, word) pair under the scoring rule (no pack cache)."""
    from cdhpc.evals.engine import context_limit

    pack = reading_pack(tokenizer, pairs, scoring, batch_size=batch_size, max_tokens=context_limit(model))
    return pack_surprisals(model, pack, len(pairs), device)


def summarize_reading(
    kind: str,
    rows: list[dict[str, str]],
    columns: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    surprisal: np.ndarray,
    word_idx: list[int],
    prev_idx: list[int],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per-word rows (predictions.jsonl), summary fields and the official reading/ files."""
    pred = surprisal[np.asarray(word_idx)]
    prev = np.array([surprisal[i] if i >= 0 else math.nan for i in prev_idx])
    result = reading_scores(columns, pred, prev)
    score = result.eye_tracking if kind == "eye_tracking" else result.self_paced
    per_measure = {m: v for m, v in result.per_measure.items() if (m == SPR_MEASURE) == (kind == "reading")}
    contexts = [pairs[i][0] for i in word_idx]
    out_rows = [
        {
            "uid": kind,
            "item_id": i,
            "item": r["item"],
            "word": r["word"],
            "surprisal": float(pred[i]),
            "prev_surprisal": None if math.isnan(prev[i]) else float(prev[i]),
        }
        for i, r in enumerate(rows)
    ]
    official = {
        "prediction.jsonl": "".join(
            _json_line(
                {
                    "Index": i,
                    "Sentence": contexts[i],
                    "Word": r["word"],
                    "Logprob": float(pred[i]),
                    "Prev_Logprob": float(prev[i]),
                }
            )
            for i, r in enumerate(rows)
        ),
        "predictions.json": {
            "reading": {
                "predictions": [
                    {"id": i, "pred": float(pred[i]), "prev_pred": float(prev[i])} for i in range(len(rows))
                ]
            }
        },
        "correlations.txt": "".join(f"{m}\t{v:.4f}\n" for m, v in result.correlations.items()),
        "predictive_power.jsonl": "".join(map(_json_line, result.power)),
        "predictive_power_spillover.jsonl": "".join(map(_json_line, result.power_spillover)),
        "report.txt": f"EYE TRACKING SCORE: {result.eye_tracking:.2f}\n"
        f"SELF-PACED READING SCORE: {result.self_paced:.2f}\n",
    }
    fields = {"score": score, "per_uid": per_measure, "n_items": len(rows), "metric": "delta_r2"}
    return out_rows, fields, official


def _json_line(obj: dict) -> str:
    import json

    return json.dumps(obj) + "\n"  # NaN as NaN, as the official files (Python's json) write it


TASK = Task(
    "reading",
    VERSION,
    "reading",
    "full_eval/reading",
    "fast_eval/reading",
    "reading_data.csv",
    REQUIRED_SPR,
    metric="delta_r2",
)

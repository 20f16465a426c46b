"""Multiple-choice tasks (BLiMP, supplement, EWoK, entity tracking, WUG): items -> requests ->
predictions -> per-UID scores, plus the official pipeline's predictions.json and report text.
Pure apart from reading the data files; scores come from the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdhpc.evals.data import EvalDataError, check_text_fields, read_records
from cdhpc.evals.engine import ScoreRequest
from cdhpc.evals.task import ChoiceItem, Task

ENTITY_SPLITS = ("regular", "ambiref", "move_contents")
TEXT_FIELDS = {
    "blimp": ("sentence_good", "sentence_bad"),
    "blimp_supplement": ("sentence_good", "sentence_bad"),
    "ewok": ("Context1", "Target1", "Target2"),
    "entity_tracking": ("input_prefix",),  # options: a list of strings, checked by its parser
    "wug": ("sentences",),
    "wug_past": ("sentences",),
    "comps": ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
}
"""Per task, the record fields whose text is scored: each must be a JSON string."""


def load_items(task: Task, files: list[Path]) -> list[ChoiceItem]:
    """Every record of every file (sorted order) as a ChoiceItem; errors name file and line."""
    return load_items_at(task, files)[0]


def load_items_at(task: Task, files: list[Path]) -> tuple[list[ChoiceItem], list[tuple[Path, int]]]:
    """`load_items` and, per item, the file and 1-based line it was read from."""
    from cdhpc.evals.engine import gc_paused

    assert task.parse is not None
    with gc_paused():  # ~10 objects per record and nothing cyclic: a collection here is wasted work
        return _read_items(task, files)


def _read_items(task: Task, files: list[Path]) -> tuple[list[ChoiceItem], list[tuple[Path, int]]]:
    assert task.parse is not None
    items: list[ChoiceItem] = []
    sources: list[tuple[Path, int]] = []
    for path in files:
        for n, (line_no, record) in enumerate(read_records(path, task.required), start=1):
            check_text_fields(path, line_no, record, TEXT_FIELDS.get(task.name, ()))
            try:
                item = task.parse(record, path)
            except (TypeError, ValueError, AttributeError) as err:
                raise EvalDataError(f"{path}: record {n}: {err} (line {line_no})") from None
            if len(item.continuations) < 2:
                raise EvalDataError(
                    f"{path}: record {n}: needs >= 2 candidates, "
                    f"got {len(item.continuations)} (line {line_no})"
                )
            items.append(item)
            sources.append((path, line_no))
    return items, sources


def item_ids(items: list[ChoiceItem]) -> list[str]:
    """The official id of each item, `<uid>_<n>` (n: its place among the items of its UID)."""
    seen: dict[str, int] = {}
    ids = []
    for item in items:
        ids.append(f"{item.uid}_{seen.get(item.uid, 0)}")
        seen[item.uid] = seen.get(item.uid, 0) + 1
    return ids


def item_requests(items: list[ChoiceItem]) -> list[ScoreRequest]:
    """One request per candidate, in item order."""
    return [ScoreRequest(ctx, cont) for it in items for ctx, cont in zip(it.contexts, it.continuations)]


def prediction_rows(items: list[ChoiceItem], scores: list[float]) -> list[dict[str, Any]]:
    """One row per item: uid, item_id (`<uid>_<n>`, as the official ids), scores, pred, correct.
    pred is the official pipeline's choice (`first_argmax`), so a tie counts as correct."""
    counts = [len(item.continuations) for item in items]
    preds = first_argmax(scores, counts)
    probs = first_probs(items, counts, scores)
    rows, seen, k = [], {}, 0
    for item, n, pred, prob in zip(items, counts, preds, probs):
        idx = seen.get(item.uid, 0)
        seen[item.uid] = idx + 1
        row = {
            "uid": item.uid,
            "item_id": f"{item.uid}_{idx}",
            "scores": scores[k : k + n],
            "pred": pred,
            "correct": pred == 0,
        }
        k += n
        if item.ratio is not None:
            row["prob"] = prob
            row["ratio"] = item.ratio
        rows.append(row)
    return rows


def candidate_blocks(scores: list[float], counts: list[int], keep: Any = None) -> Iterator[tuple[Any, Any]]:
    """Per candidate count n: the indices of the items with n candidates (only those where `keep`
    is true, when given) and their scores as an (items, n) float64 block; item i owns the next
    counts[i] scores."""
    import numpy as np

    flat = np.asarray(scores, dtype=np.float64)
    sizes = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    chosen = np.ones(len(sizes), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    for n in np.unique(sizes[chosen]):
        members = np.flatnonzero(chosen & (sizes == n))
        yield members, flat[starts[members, None] + np.arange(n)]


def first_argmax(scores: list[float], counts: list[int]) -> list[int]:
    """Each item's chosen candidate: the first highest score, a NaN counting as highest, as the
    official pipeline's torch.max(dim=1) chooses."""
    preds = [0] * len(counts)
    for members, block in candidate_blocks(scores, counts):
        for i, pred in zip(members.tolist(), block.argmax(axis=1).tolist()):
            preds[i] = pred
    return preds


def first_probs(items: list[ChoiceItem], counts: list[int], scores: list[float]) -> list[float | None]:
    """P(candidate 0) of each item with a human ratio (WUG), None for the others: a float32
    softmax over the item's candidate log-probs, as the official pipeline computes it (its
    rounding to exactly 1.0 is part of the official Spearman: tied ranks)."""
    out: list[float | None] = [None] * len(items)
    rated = [item.ratio is not None for item in items]
    if any(rated):
        import torch

        for members, block in candidate_blocks(scores, counts, rated):
            probs = torch.softmax(torch.from_numpy(block.astype("float32")), dim=1)[:, 0].tolist()
            for i, prob in zip(members.tolist(), probs):
                out[i] = prob
    return out


def accuracy_by(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Accuracy (x100) per value of keys, in order of first appearance."""
    from collections import Counter

    total = Counter(keys)
    correct = Counter(key for row, key in zip(rows, keys) if row["correct"])
    return {k: 100.0 * correct[k] / n for k, n in total.items()}


def spearman(rows: list[dict[str, Any]]) -> float:
    """Spearman's rho between P(candidate 0 | item) and the human `ratio` (official WUG metric)."""
    from scipy.stats import spearmanr

    return float(spearmanr([r["prob"] for r in rows], [r["ratio"] for r in rows])[0])


def entity_tracking_score(per_uid: dict[str, float]) -> float:
    """Official averaging: mean over the `<split>_<n>_ops` UIDs of each split (regular, ambiref,
    move_contents), then the mean over the splits present."""
    means = split_means(per_uid)
    return sum(means.values()) / len(means)


def split_means(per_uid: dict[str, float]) -> dict[str, float]:
    """Mean accuracy of each entity-tracking split present, keyed by split name."""
    out = {}
    for split in ENTITY_SPLITS:
        accs = [v for k, v in per_uid.items() if k.startswith(split)]
        if accs:
            out[split] = sum(accs) / len(accs)
    return out


def official_predictions(
    rows: list[dict[str, Any]], items: list[ChoiceItem], with_prob: bool
) -> dict[str, Any]:
    """predictions.json as the 2025 pipeline writes it: {uid: {"predictions": [{"id", "pred"}]}}
    where pred is the chosen completion text (and "prob" for WUG under Spearman)."""
    out: dict[str, Any] = {}
    for row, item in zip(rows, items):
        entry = {"id": row["item_id"], "pred": item.completions[row["pred"]]}
        if with_prob:
            entry["prob"] = row["prob"]
        out.setdefault(row["uid"], {"predictions": []})["predictions"].append(entry)
    return out


def report_sections(
    task: Task, rows: list[dict[str, Any]], items: list[ChoiceItem], metric: str
) -> dict[str, dict[str, float]]:
    """The sections of best_temperature_report.txt: one per metadata key (official order)."""
    if metric == "spearman":
        return {"UID": {"avg": spearman(rows)}}
    sections = {key: accuracy_by(rows, [it.meta[key] for it in items]) for key in items[0].meta}
    if task.name == "entity_tracking":
        sections["UID"].update(split_means(sections["UID"]))
    return sections


def report_text(sections: dict[str, dict[str, float]], average: float, metric: str) -> str:
    """best_temperature_report.txt of the official pipeline (temperature 1)."""
    name = "SPEARMAN'S RHO" if metric == "spearman" else "ACCURACY"
    lines = ["TEMPERATURE: 1.00", ""]
    for domain, values in sections.items():
        lines.append(f"### {domain.upper()} {name}")
        lines.extend(f"{k}: {v:.2f}" for k, v in values.items())
        lines.append("")
    lines += [f"### AVERAGE {name}", f"{average:.2f}", ""]
    return "\n".join(lines) + "\n"


def summarize_choice(
    task: Task, items: list[ChoiceItem], scores: list[float], metric: str
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Prediction rows, the summary fields (score, per_uid, n_items, metric) and the official
    files {name: content} of a choice task."""
    rows = prediction_rows(items, scores)
    if metric == "spearman":
        score = spearman(rows)
        per_uid = {items[0].uid: score}
    else:
        per_uid = accuracy_by(rows, [r["uid"] for r in rows])
        score = task.aggregate(per_uid)
    sections = report_sections(task, rows, items, metric)
    official = {
        "predictions.json": official_predictions(rows, items, metric == "spearman"),
        "best_temperature_report.txt": report_text(sections, score, metric),
    }
    fields = {"score": score, "per_uid": per_uid, "n_items": len(rows), "metric": metric}
    return rows, fields, official

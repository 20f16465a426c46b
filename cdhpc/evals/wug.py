"""WUG adjective nominalization (`wug_adj`): the tab-separated candidate sentences of a record,
each scored whole; UID "wug_adj", as the official reader names it. Metric (`wug_metric`):
``spearman`` (official default): Spearman's rho between P(candidate 0 | record) -- a float32
softmax over the candidates' summed log-probs, as the official compute_results.py, whose rounding
to exactly 1.0 makes ties that change the ranks -- and the human `ratio`; ``accuracy`` (the
paper's WUG column, the pipeline before July 2025): candidate 0 ranked first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "wug-2025.2"  # 2: UID wug_adj, official scoring rule by default
METRICS = ("spearman", "accuracy")


def parser(uid: str):
    """The record parser of a WUG task whose official UID is `uid`."""

    def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
        """A WUG record: `sentences` holds the candidates separated by tabs, `ratio` a number."""
        sentences = record["sentences"]
        if not isinstance(sentences, str):
            raise ValueError(f"field 'sentences' must be a tab-separated string, got {sentences!r}")
        try:
            ratio = float(record["ratio"])
        except (TypeError, ValueError):
            raise ValueError(f"field 'ratio' must be a number, got {record['ratio']!r}") from None
        parts = tuple(sentences.split("\t"))
        return ChoiceItem(uid, ("",) * len(parts), parts, {"UID": uid}, ratio)

    return parse


TASK = Task(
    "wug",
    VERSION,
    "choice",
    "full_eval/wug_adj_nominalization",
    "fast_eval/wug_adj_nominalization",
    "*.jsonl",
    ("sentences", "ratio"),
    parser("wug_adj"),
    metric="spearman",
)

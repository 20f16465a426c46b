"""WUG adjective nominalization: the tab-separated sentences, each scored whole; one UID (the file
stem). Metric: accuracy (the authors; pipeline up to July 2025) or Spearman's rho between
P(candidate 0 | pair) and the human `ratio` (later pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "wug-2025.1"
METRICS = ("accuracy", "spearman")


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """A WUG item: `sentences` holds the candidates separated by tabs, `ratio` a number."""
    sentences = record["sentences"]
    if not isinstance(sentences, str):
        raise ValueError(f"field 'sentences' must be a tab-separated string, got {sentences!r}")
    try:
        ratio = float(record["ratio"])
    except (TypeError, ValueError):
        raise ValueError(f"field 'ratio' must be a number, got {record['ratio']!r}") from None
    parts = tuple(sentences.split("\t"))
    return ChoiceItem(path.stem, ("",) * len(parts), parts, {"UID": path.stem}, ratio)


TASK = Task("wug", VERSION, "choice", "full_eval/wug_adj_nominalization",
            "fast_eval/wug_adj_nominalization", "*.jsonl", ("sentences", "ratio"), parse)

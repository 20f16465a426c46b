"""EWoK (filtered): Context1 + " " + Target1/Target2, only " " + Target scored; UID = Domain.
Scoring options (official, joint) score the same target tokens; they differ only in whether a
BOS the tokenizer does not add conditions the context (joint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "ewok-2025.2"  # 2: the official scoring rule (tokenizer-decided BOS) by default

# optional report categories of the official reader (record field -> report section)
_EXTRA = {"ContextType": "context_type", "ContextDiff": "context_contrast", "TargetDiff": "target_contrast"}


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """An EWoK item in the default (suffix-scored) mode of the 2025 pipeline."""
    context = str(record["Context1"])
    meta = {"UID": str(record["Domain"])}
    meta.update({name: str(record[key]) for key, name in _EXTRA.items() if key in record})
    targets = (" " + str(record["Target1"]), " " + str(record["Target2"]))
    return ChoiceItem(meta["UID"], (context, context), targets, meta)


TASK = Task(
    "ewok",
    VERSION,
    "choice",
    "full_eval/ewok_filtered",
    "fast_eval/ewok_fast",
    "*.jsonl",
    ("Domain", "Context1", "Context2", "Target1", "Target2"),
    parse,
)

"""BLiMP supplement: good vs bad sentence, each scored whole; UID = file stem (no `field`).
Scoring options as BLiMP's (cdhpc.evals.blimp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "blimp_supplement-2025.2"  # 2: the official scoring rule (tokenizer-decided BOS) by default


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """A supplement pair; report categories as the official reader fills them."""
    meta = {"field": "supplement", "UID": path.stem, "linguistics_term": "supplement"}
    good, bad = str(record["sentence_good"]), str(record["sentence_bad"])
    return ChoiceItem(path.stem, ("", ""), (good, bad), meta)


TASK = Task(
    "blimp_supplement",
    VERSION,
    "choice",
    "full_eval/supplement_filtered",
    "fast_eval/supplement_fast",
    "*.jsonl",
    ("sentence_good", "sentence_bad"),
    parse,
)

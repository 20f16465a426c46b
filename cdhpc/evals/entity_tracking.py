"""Entity tracking: input_prefix + option, option scored; UID = `<file stem>_<numops>_ops`;
score = mean over splits of the mean over that split's UIDs (official averaging). Scoring options
as EWoK's (cdhpc.evals.ewok)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.choice import ENTITY_SPLITS, entity_tracking_score
from cdhpc.evals.task import ChoiceItem, Task

VERSION = "entity_tracking-2025.2"  # 2: the official scoring rule (tokenizer-decided BOS) by default


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """An entity-tracking item; the file stem must name one of the official splits."""
    if path.stem not in ENTITY_SPLITS:
        raise ValueError(
            f"file stem {path.stem!r} is not an entity-tracking split; allowed: {list(ENTITY_SPLITS)}"
        )
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"field 'options' must be a list of strings, got {options!r}")
    uid = f"{path.stem}_{record['numops']}_ops"
    prefix = str(record["input_prefix"])
    return ChoiceItem(uid, (prefix,) * len(options), tuple(options), {"UID": uid})


TASK = Task(
    "entity_tracking",
    VERSION,
    "choice",
    "full_eval/entity_tracking",
    "fast_eval/entity_tracking_fast",
    "*.jsonl",
    ("input_prefix", "options", "numops"),
    parse,
    entity_tracking_score,
)

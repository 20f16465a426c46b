"""COMPS (Misra et al. 2023): does a model know a concept's property and pass it on to a nonce
word? Candidate i is `prefix + " " + property_phrase` (prefix_acceptable first), the property
phrase scored; `pred` in predictions.json is the whole sentence, as the official reader shows it.
UID by file: comps_base -> base, comps_wugs -> wugs, comps_wugs_dist-before -> wugs_dist_before,
any other file -> wugs_dist_in_between (the official rule). The official data has no fast subset:
`set: fast` reads full_eval/comps too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "comps-2025.1"
UIDS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """A COMPS pair; every field a string."""
    fields = ("prefix_acceptable", "prefix_unacceptable", "property_phrase")
    for f in fields:
        if not isinstance(record[f], str):
            raise ValueError(f"field {f!r} must be a string, got {record[f]!r}")
    good, bad, phrase = (record[f] for f in fields)
    uid = UIDS.get(path.stem, "wugs_dist_in_between")
    return ChoiceItem(
        uid,
        (good + " ", bad + " "),
        (phrase, phrase),
        {"UID": uid},
        shown=(f"{good} {phrase}", f"{bad} {phrase}"),
    )


TASK = Task(
    "comps",
    VERSION,
    "choice",
    "full_eval/comps",
    "full_eval/comps",
    "*.jsonl",
    ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
    parse,
)

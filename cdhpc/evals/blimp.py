"""BLiMP (filtered): good vs bad sentence, each scored whole; UID = the `UID` field.

Options (cdhpc.evals.engine): scoring ``official`` (default) scores the tokens the tokenizer
makes, a sentence's first token unscored where the tokenizer adds no BOS; ``joint`` prepends BOS
and scores every token. Identical for tokenizers that add a BOS (this project's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdhpc.evals.task import ChoiceItem, Task

VERSION = "blimp-2025.2"  # 2: the official scoring rule (tokenizer-decided BOS) by default


def parse(record: dict[str, Any], path: Path) -> ChoiceItem:
    """A BLiMP pair; `syntax_semantics` is renamed `syntax/semantics` as the official reader does."""
    field = str(record["field"])
    meta = {
        "field": "syntax/semantics" if field == "syntax_semantics" else field,
        "UID": str(record["UID"]),
        "linguistics_term": str(record["linguistics_term"]),
    }
    good, bad = str(record["sentence_good"]), str(record["sentence_bad"])
    return ChoiceItem(meta["UID"], ("", ""), (good, bad), meta)


TASK = Task(
    "blimp",
    VERSION,
    "choice",
    "full_eval/blimp_filtered",
    "fast_eval/blimp_fast",
    "*.jsonl",
    ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID"),
    parse,
)

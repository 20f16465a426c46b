"""Writing a task's outputs: each file atomically (cdhpc.sweep.receipts: tmp + fsync + rename),
summary.json last, so a reader never sees a partial file and a summary only exists once
everything it describes is in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdhpc.base.atomicio import atomic_write_text


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_outputs(
    out_dir: Path, rows: list[dict[str, Any]], official: dict[str, Any], summary: dict[str, Any]
) -> None:
    """predictions.jsonl, the official files (dicts as JSON, str as text), then summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # a stale summary must not vouch for the files being replaced
    (out_dir / "summary.json").unlink(missing_ok=True)
    atomic_write_text(out_dir / "predictions.jsonl", jsonl_text(rows))
    for name, content in official.items():
        text = content if isinstance(content, str) else json.dumps(content)
        atomic_write_text(out_dir / name, text)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

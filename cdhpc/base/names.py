"""Names: of training runs (they name directories and table rows) and the table's row labels, one
rule each (docs/design.md §9)."""

from __future__ import annotations

from typing import Any


def baseline_run(method: str, seed: int) -> str:
    """Run names (they name directories): a baseline run, a small amateur, a retrained run."""
    return f"{method}-s{seed}"


def amateur_run(preset: str, seed: int) -> str:
    return f"amateur-{preset}-s{seed}"


def retrain_run(method: str, share: float, seed: int) -> str:
    return f"{method}-q{share:g}-s{seed}"


def method_labels(evals: list[dict[str, Any]]) -> dict[tuple[str, float], str]:
    """Pure: a table row per (method, synthetic share): the method's name, plus `@q<share>` when
    the method is trained at several shares (as the aggregate stage labels them)."""
    shares: dict[str, set] = {}
    for p in evals:
        shares.setdefault(p["method"], set()).add(p["synthetic_share"])
    return {(m, q): m if len(qs) == 1 else f"{m}@q{q:g}" for m, qs in shares.items() for q in qs}

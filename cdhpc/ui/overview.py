"""Pure: the per-stage overview of ``cdhpc status`` (the plain table of ``--once``, the TUI's
Overview tab): counts by state, elapsed and remaining time, tokens, GPU-hours. Re-exported by
``cdhpc.ui.status``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdhpc import STAGES

if TYPE_CHECKING:
    from cdhpc.ui.status import Snapshot


def stage_counts(steps: list[dict], states: dict[str, str]) -> list[tuple[str, Counter]]:
    """Pure: per stage, how many steps are in each state."""
    counts: dict[str, Counter] = {}
    for s in steps:
        counts.setdefault(s["stage"], Counter())[states[s["key"]]] += 1
    return [(stage, counts[stage]) for stage in STAGES if stage in counts]


@dataclass(frozen=True)
class StageRow:
    """One stage of the overview."""

    stage: str
    counts: Counter  # state -> number of steps
    total: int
    elapsed_s: float  # first start (or submission) to last finish, or to now while any step is live
    remaining_s: float | None  # estimate; None when no step of the stage has finished yet
    tokens: int  # generated tokens (generate stage; 0 elsewhere)
    gpu_hours: float  # sum of runtime x GPUs over the stage's receipts (h)


def _gpus(spec: dict[str, Any]) -> int:
    """A step's GPUs: a head's `gpus` (a dict or a manifest row), or from a spec's resources."""
    try:
        return spec["gpus"]
    except (KeyError, IndexError):  # sqlite3.Row raises IndexError for a name it does not have
        from cdhpc.sweep.manifest_db import step_gpus

        return step_gpus(spec)


@dataclass
class _StageSums:
    counts: Counter = field(default_factory=Counter)
    runtimes_s: list[float] = field(default_factory=list)  # of the done steps
    starts: list[float] = field(default_factory=list)  # receipts' starts and jobs' submissions
    ends: list[float] = field(default_factory=list)  # receipts' finishes
    tokens: int = 0
    gpu_s: float = 0.0


def remaining_estimate_s(runtimes_s: list[float], left: int, running: int) -> float | None:
    """Pure: time until `left` unfinished steps are done, at the mean runtime of the finished ones,
    `max(1, running)` at a time (s). None before any step has finished."""
    if left == 0:
        return 0.0
    if not runtimes_s:
        return None
    return sum(runtimes_s) / len(runtimes_s) * left / max(1, running)


def stage_overview(snap: Snapshot) -> list[StageRow]:
    """Pure: one row per stage with counts, elapsed and remaining time, tokens and GPU-hours (one
    pass over the planned steps, then one over their receipts, job records and token counts)."""
    steps, states = snap.steps, snap.states
    stage_of = {s["key"]: s["stage"] for s in steps}
    sums: dict[str, _StageSums] = {stage: _StageSums() for stage in dict.fromkeys(stage_of.values())}
    for (stage, state), n in Counter(zip(stage_of.values(), map(states.__getitem__, stage_of))).items():
        sums[stage].counts[state] = n
    for s in steps:
        r = snap.receipts.get(s["key"])
        if r is not None:
            acc, started, finished, runtime_s = sums[s["stage"]], r["started"], r["finished"], r["runtime_s"]
            acc.starts.append(started)
            acc.ends.append(finished)
            acc.gpu_s += (runtime_s or 0.0) * _gpus(s)
            if states[s["key"]] == "done":
                acc.runtimes_s.append(runtime_s)
    for key, j in snap.jobs.items():
        if key in stage_of and j["submitted"]:
            sums[stage_of[key]].starts.append(j["submitted"])
    for key, n in snap.tokens.items():
        if key in stage_of:
            sums[stage_of[key]].tokens += n or 0
    out = []
    for stage in [st for st in STAGES if st in sums] + sorted(set(sums) - set(STAGES)):
        acc = sums[stage]
        total, live = sum(acc.counts.values()), acc.counts["running"] + acc.counts["queued"] > 0
        elapsed = (
            max(0.0, (snap.now if live or not acc.ends else max(acc.ends)) - min(acc.starts))
            if acc.starts
            else 0.0
        )
        out.append(
            StageRow(
                stage,
                acc.counts,
                total,
                elapsed,
                remaining_estimate_s(acc.runtimes_s, total - len(acc.runtimes_s), acc.counts["running"]),
                acc.tokens,
                acc.gpu_s / 3600,
            )
        )
    return out


def format_duration(seconds: float | None) -> str:
    """Pure: '-', '45s', '12m05s', '3h07m' or '2d04h'."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"

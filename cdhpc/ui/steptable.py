"""Pure: the steps table of ``cdhpc status`` (the TUI's Steps tab): one row per planned step,
filtered and sorted. Re-exported by ``cdhpc.ui.status``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdhpc import STAGES
from cdhpc.sweep.stepstate import BLOCKED, DONE, FAILED, MISSING, QUEUED, RUNNING

if TYPE_CHECKING:
    from cdhpc.ui.status import Snapshot

STATES = (DONE, RUNNING, QUEUED, FAILED, MISSING, BLOCKED)


@dataclass(frozen=True)
class StepRow:
    """One step of the steps table."""

    key: str
    stage: str
    name: str
    state: str
    job: str  # job id, with `_<array_index>` for an array element; '' before submission
    attempts: int
    node: str
    runtime_s: float | None  # receipt's runtime, or time since submission while live
    metric: str  # val PPL (pretrain), score (evaluate), tokens (generate)


def _metric(stage: str, key: str, snap: Snapshot) -> str:
    if stage == "pretrain" and key in snap.val_ppl:
        return f"ppl {snap.val_ppl[key]:.2f}"
    if stage == "evaluate" and key in snap.scores:
        return f"{snap.scores[key]:.2f}"
    if stage == "generate" and key in snap.tokens:
        return f"{snap.tokens[key]:,} tok"
    return ""


def step_rows(snap: Snapshot) -> list[StepRow]:
    """Pure: one row per planned step, in plan order."""
    rows = []
    for s in snap.steps:
        key, state = s["key"], snap.states[s["key"]]
        r, j = snap.receipts.get(key), snap.jobs.get(key)
        job = (
            ""
            if j is None
            else str(j["job_id"]) + ("" if j["array_index"] is None else f"_{j['array_index']}")
        )
        runtime = r["runtime_s"] if r is not None and state not in ("running", "queued") else None
        if runtime is None and j is not None and state in ("running", "queued") and j["submitted"]:
            runtime = max(0.0, snap.now - j["submitted"])
        attempts = (j["attempt"] if j is not None else None) or (r["attempt"] if r is not None else 0)
        rows.append(
            StepRow(
                key,
                s["stage"],
                s["name"],
                state,
                job,
                attempts or 0,
                (r["host"] or "") if r is not None else "",
                runtime,
                _metric(s["stage"], key, snap),
            )
        )
    return rows


def filter_rows(rows: list[StepRow], query: str) -> list[StepRow]:
    """Pure: rows matching every word of `query`. A word that is a state name (done, failed, ...)
    or `state:<name>` keeps that state; any other word must occur in the stage, name, job id or
    node (case-insensitive)."""
    words = query.lower().split()
    states = {w.removeprefix("state:") for w in words if w.removeprefix("state:") in STATES}
    texts = [w for w in words if w.removeprefix("state:") not in STATES]
    out = []
    for r in rows:
        hay = f"{r.stage} {r.name} {r.job} {r.node}".lower()
        if (not states or r.state in states) and all(t in hay for t in texts):
            out.append(r)
    return out


SORT_COLUMNS = ("stage", "name", "state", "job", "attempts", "node", "runtime_s", "metric")


def sort_rows(rows: list[StepRow], column: str, reverse: bool = False) -> list[StepRow]:
    """Pure: rows sorted by one column; stages in pipeline order, empty values last."""
    if column not in SORT_COLUMNS:
        raise ValueError(f"cannot sort steps by {column!r}; columns: {', '.join(SORT_COLUMNS)}")

    def key(r: StepRow) -> tuple:
        v = getattr(r, column)
        if column == "stage":
            v = STAGES.index(v) if v in STAGES else len(STAGES)
        elif column == "metric":
            num = v.replace("ppl ", "").replace(" tok", "").replace(",", "")
            v = float(num) if num else None
        return (v is None or v == "", v if v is not None else 0)

    present = [r for r in rows if not key(r)[0]]
    empty = [r for r in rows if key(r)[0]]
    return sorted(present, key=key, reverse=reverse) + empty

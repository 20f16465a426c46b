"""``cdhpc status --once``: the sweep's per-stage progress and its failed steps, as Rich tables."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from cdhpc import STAGES


def sweep_states(workdir: Path) -> tuple[list[dict], dict[str, str], dict[str, dict]]:
    """(planned step dicts, state by key, receipt rows by key), after ingesting new receipts."""
    from cdhpc.manifest import Manifest
    from cdhpc.plan import Plan, StepSpec
    from cdhpc.scheduler import step_states

    steps = json.loads((workdir / "plan.json").read_text())["steps"]
    plan = Plan([StepSpec.from_dict(s) for s in steps])
    with Manifest(workdir) as m:
        m.register_plan(steps)
        m.ingest()
        receipts = m.receipts_by_key()
        states = step_states(workdir, plan, receipts, m.jobs_by_key(), m.outputs_of)
        return steps, states, {k: dict(v) for k, v in receipts.items()}


def stage_counts(steps: list[dict], states: dict[str, str]) -> list[tuple[str, Counter]]:
    """Pure: per stage, how many steps are in each state."""
    counts: dict[str, Counter] = {}
    for s in steps:
        counts.setdefault(s["stage"], Counter())[states[s["key"]]] += 1
    return [(stage, counts[stage]) for stage in STAGES if stage in counts]


def print_status(workdir: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    steps, states, receipts = sweep_states(workdir)
    table = Table(title=f"{workdir.name}: {len(steps)} steps")
    for col in ("stage", "done", "running", "queued", "failed", "to run", "total"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, c in stage_counts(steps, states):
        table.add_row(stage, str(c["done"]), str(c["running"]), str(c["queued"]), str(c["failed"]),
                      str(c["missing"] + c["blocked"]), str(sum(c.values())))
    console = Console(width=140)
    console.print(table)
    failed = [s for s in steps if states[s["key"]] == "failed"]
    if failed:
        ft = Table(title=f"{len(failed)} failed step(s)")
        for col in ("stage", "name", "error", "log"):
            ft.add_column(col)
        for s in failed[:50]:
            r = receipts.get(s["key"]) or {}
            err = (r.get("error") or "no receipt: the job ended without writing one").strip().splitlines()[-1]
            ft.add_row(s["stage"], s["name"], err[:80], r.get("stdout") or "")
        console.print(ft)
    return 1 if failed else 0

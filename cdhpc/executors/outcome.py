"""What both executors' launches share: the manifest sync they start with (register the plan,
ingest), the ``outputs_of`` lookup of ``step_states`` over one query, the log of receipts that
could not be ingested, and the paper table printed once the aggregate step is done
(docs/design.md §7, §9)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cdhpc.sweep.workdir import Workdir

if TYPE_CHECKING:
    from cdhpc.sweep.plan import Plan

log = logging.getLogger("cdhpc")


def outputs_lookup(m):
    """The ``outputs_of`` of ``step_states`` over one query of a Manifest's whole outputs table."""
    by_key = m.outputs_by_key()
    return lambda key: by_key.get(key, [])


def sync_manifest(m, workdir: Path, plan: Plan) -> None:
    """What both launches do first with the open Manifest `m`: register the whole sweep's plan
    (the workdir's plan.json, or `plan` before one is written) and ingest what changed, logging
    what could not be ingested."""
    recorded = Workdir(workdir).plan
    m.register_plan(
        json.loads(recorded.read_text())["steps"] if recorded.is_file() else [s.to_dict() for s in plan.steps]
    )
    report_bad(m.ingest().bad)


def print_results(workdir: Path, plan: Plan, done: list[str]) -> None:
    """The paper table and the files of the results, once the aggregate step is done."""
    agg = plan.stage("aggregate")
    if not agg or agg[0].key not in done:
        return
    results = Workdir(workdir).results
    print((results / "paper_table.md").read_text())
    for f in sorted(results.iterdir()):
        print(f"  {f}")


_REPORTED: set[str] = set()


def report_bad(bad: list[str]) -> None:
    """Log receipts or job records that could not be ingested (once each)."""
    for msg in bad:
        if msg not in _REPORTED:
            _REPORTED.add(msg)
            log.error("not ingested: %s", msg)

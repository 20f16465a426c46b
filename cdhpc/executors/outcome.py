"""What both executors' launches share after the manifest sync: the ``outputs_of`` lookup of
``step_states`` over one query, the log of receipts that could not be ingested, and the paper table
printed once the aggregate step is done (docs/design.md §7)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdhpc.sweep.plan import Plan

log = logging.getLogger("cdhpc")


def outputs_lookup(m):
    """The ``outputs_of`` of ``step_states`` over one query of a Manifest's whole outputs table."""
    by_key = m.outputs_by_key()
    return lambda key: by_key.get(key, [])


def print_results(workdir: Path, plan: Plan, done: list[str]) -> None:
    """The paper table and the files of the results, once the aggregate step is done."""
    agg = plan.stage("aggregate")
    if not agg or agg[0].key not in done:
        return
    results = workdir / "results"
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

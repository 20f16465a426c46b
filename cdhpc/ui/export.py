"""``cdhpc export`` / ``cdhpc report``: the paper table from the scores that exist so far (the
aggregate step's computation over the done evaluate steps; marked partial until all are done).
Neither takes the workdir's lock; report writes nothing into the workdir (beyond the manifest
index, where it can be written), export writes only ``results/`` (atomically)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def done_evaluations(workdir: Path) -> tuple[dict, list, int]:
    """(aggregate step spec, ok receipts of its evaluate inputs, number of inputs planned)."""
    from cdhpc.sweep.manifest import Manifest
    from cdhpc.sweep.receipts import read_receipt
    from cdhpc.ui.status import read_plan_steps

    agg = next((s for s in read_plan_steps(workdir) if s["stage"] == "aggregate"), None)
    if agg is None:
        raise SystemExit("cdhpc: this sweep has no aggregate step")
    with Manifest(workdir, fallback=True) as m:
        m.ingest()
        ok = {k: r["path"] for k, r in m.receipts_by_key().items() if r["status"] == "ok"}
    wanted = list(agg["inputs"].values())
    return agg, [read_receipt(workdir / ok[k]) for k in wanted if k in ok], len(wanted)


def export(workdir: Path, write: bool) -> int:
    """Print the (possibly partial) table; with `write`, publish results/ as aggregate does."""
    from cdhpc.results.report import render_markdown
    from cdhpc.ui.status import read_plan_steps
    from jobs.aggregate import build_table, publish

    agg, receipts, planned = done_evaluations(workdir)
    if not receipts:
        print(f"cdhpc: no evaluate step of {workdir} is done yet; nothing to report", file=sys.stderr)
        return 1
    table, records = build_table(workdir, receipts, agg["params"])
    if len(receipts) < planned:
        print(
            f"PARTIAL: {len(receipts)} of {planned} evaluate steps done; mean-max over the checkpoints "
            "evaluated so far\n"
        )
    print(render_markdown(table))
    if write:  # the report is rendered outside the workdir, then published as results/ in one rename
        with tempfile.TemporaryDirectory(prefix="cdhpc-export-") as out:
            partial = f"{len(receipts)} of {planned} evaluate steps done" if len(receipts) < planned else None
            wanted = set(agg["inputs"].values())  # every planned run's curve, trained or training
            evals = [s for s in read_plan_steps(workdir) if s["key"] in wanted]
            for f in publish(workdir, table, records, Path(out), partial=partial, eval_specs=evals):
                print(f"  {f}")
    return 0

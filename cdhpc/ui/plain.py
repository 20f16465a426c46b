"""``cdhpc status --once``: the per-stage table, the running pretrain steps and the failed steps,
printed once from a light snapshot (`cdhpc.ui.status.SnapshotReader(specs=False)`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cdhpc.ui.overview import format_duration, stage_overview
from cdhpc.ui.status import Snapshot, SnapshotReader

FAILED_SHOWN = 50  # failed steps listed by `cdhpc status --once` (all are counted)


def print_status(workdir: Path) -> int:
    """``cdhpc status --once``: the per-stage table and the failed steps. Exit 1 if any failed."""
    import gc

    # ~200k manifest rows, none in a reference cycle: without the collector's passes over them (a
    # tenth of the time at 46k steps) and freed by their reference counts before it runs again
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _print_status(workdir)
    finally:
        if enabled:
            gc.enable()


def _print_status(workdir: Path) -> int:
    from rich.console import Console

    with SnapshotReader(workdir, specs=False) as reader:  # the manifest's step heads: no plan.json parse
        snap = reader.read()
        training = reader.specs_of(
            [s["key"] for s in snap.steps if s["stage"] == "pretrain" and snap.states[s["key"]] == "running"]
        )
        failed = [s for s in snap.steps if snap.states[s["key"]] == "failed"]
        shown = reader.receipts_of([s["key"] for s in failed[:FAILED_SHOWN]])  # with their errors
    console = Console(width=140)
    console.print(_overview_table(workdir, snap))
    if training:  # running pretrain steps: latest step, loss, tokens/s
        from cdhpc.ui.training import print_training

        print_training(console, replace(snap, steps=training))
    from cdhpc.executors.waves import read_waves, wave_line

    if (
        waves := wave_line(read_waves(workdir))
    ) is not None:  # a sweep submitted in waves (cdhpc.executors.waves)
        console.print(waves, highlight=False)
    if failed:
        console.print(_failed_table(failed, shown))
    return 1 if failed else 0


def _overview_table(workdir: Path, snap: Snapshot) -> Any:
    from rich.table import Table

    table = Table(title=f"{workdir.name}: {len(snap.steps)} steps")
    for col in (
        "stage",
        "done",
        "running",
        "queued",
        "failed",
        "to run",
        "total",
        "elapsed",
        "remaining",
        "GPU-h",
    ):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in stage_overview(snap):
        c = row.counts
        table.add_row(
            row.stage,
            str(c["done"]),
            str(c["running"]),
            str(c["queued"]),
            str(c["failed"]),
            str(c["missing"] + c["blocked"]),
            str(row.total),
            format_duration(row.elapsed_s),
            format_duration(row.remaining_s),
            f"{row.gpu_hours:.2f}",
        )
    return table


def _failed_table(failed: list[Any], receipts: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{len(failed)} failed step(s)")
    for col in ("stage", "name", "error", "log"):
        table.add_column(col)
    for s in failed[:FAILED_SHOWN]:
        r = receipts.get(s["key"])
        table.add_row(s["stage"], s["name"], failure_line(r)[:80], r["stdout"] or "" if r else "")
    return table


def failure_line(receipt: Any) -> str:
    """Pure: the last line of a failed step's error, or why there is none."""
    if receipt is not None and receipt["status"] == "ok":  # failed only because its outputs changed since
        return "its outputs changed after its receipt was written; the next launch runs it again"
    err = ((receipt["error"] if receipt else None) or "no receipt: the job ended without writing one").strip()
    return err.splitlines()[-1] if err else "failed without an error message"

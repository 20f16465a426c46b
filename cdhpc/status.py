"""The data behind ``cdhpc status``: one shell that reads a workdir into a ``Snapshot`` (ingest
only what changed, then one query per table), and pure functions from a snapshot to the rows the
plain table (``--once``) and the terminal UI (``cdhpc.tui``) show.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc import STAGES
# the pure views of a snapshot, re-exported: cdhpc.status is where the CLI, TUI and tests find them
from cdhpc.partial import LOWER_IS_BETTER, PartialTable, method_labels, partial_table  # noqa: F401
from cdhpc.steptable import SORT_COLUMNS, STATES, StepRow, filter_rows, sort_rows, step_rows  # noqa: F401


@dataclass
class Snapshot:
    """One consistent view of a sweep: its plan, each step's state, and the manifest rows."""

    workdir: Path
    steps: list[dict[str, Any]]  # plan.json's step dicts, in dependency order
    states: dict[str, str]  # key -> one of STATES
    receipts: dict[str, Any] = field(default_factory=dict)  # key -> receipts row (a mapping)
    jobs: dict[str, Any] = field(default_factory=dict)  # key -> jobs row (a mapping)
    val_ppl: dict[str, float] = field(default_factory=dict)  # pretrain key -> last checkpoint's val PPL
    tokens: dict[str, int] = field(default_factory=dict)  # generate key -> tokens in its shard
    scores: dict[str, float] = field(default_factory=dict)  # evaluate key -> score (task units)
    now: float = 0.0  # unix time of the read (s)


class SnapshotReader:
    """Reads a workdir again and again, cheaply. plan.json is re-parsed only when it changes.
    Receipts and job records are written by atomic rename, which gives the file a new inode and
    touches its directory's mtime: only directories whose mtime changed are listed (os.scandir,
    no stat), only files with a new inode are ingested, and only their steps' rows are queried
    again. Outputs of done steps are re-checked (size + mtime) on `read(verify=True)` and for
    receipts that changed; live jobs' pids are probed on every read."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._plan_sig: tuple | None = None
        self._dirs: dict[str, int] = {}  # receipts/<stage>, jobs/<stage> -> mtime_ns
        self._inodes: dict[str, int] = {}  # relative path -> inode
        self._steps: list[dict[str, Any]] = []
        self._rows: dict[str, dict] = {}
        self._intact: dict[str, bool] = {}  # key -> outputs intact at the last check
        self._last_poll = 0.0  # time.monotonic() of the last SLURM poll
        self.slurm_poll_s = 2.0  # at most one sacct call per this many seconds
        self.slurm_error: str | None = None  # why the last SLURM poll failed
        self._manifest: Any = None  # the open Manifest (fallback mode: in memory where it cannot be written)
        self._manifest_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file it opened

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None

    @property
    def in_memory(self) -> bool:
        """The manifest could not be written: this reader indexes the workdir in memory."""
        return self._manifest is not None and self._manifest.in_memory

    def manifest(self) -> Any:
        """The reader's Manifest, kept open between reads (no reconnect and quick_check per
        refresh) and reopened, with a full ingest, when the file was replaced (healed or removed
        by another process). Read-only: it writes nothing where the file cannot be written."""
        from cdhpc.manifest import Manifest

        ident = _file_id(self.workdir / "manifest.sqlite")
        m = self._manifest
        if m is not None and (m.in_memory or ident == self._manifest_id):
            return m
        if m is not None:
            m.close()
            self._dirs, self._inodes, self._plan_sig = {}, {}, None
        self._manifest = Manifest(self.workdir, fallback=True)
        self._manifest_id = _file_id(self.workdir / "manifest.sqlite")
        return self._manifest

    def outputs_of(self, key: str) -> list[Any]:
        """A step's indexed outputs (for the TUI's detail screen)."""
        return self.manifest().outputs_of(key)

    def read(self, verify: bool = False, ingest: bool = True) -> Snapshot:
        """The current snapshot; `verify` re-checks every done step's outputs. `ingest=False`
        (for a first render within a second) shows the manifest as last ingested. Live SLURM
        jobs are polled first (one sacct call, at most every `slurm_poll_s`); the job records
        whose state changed are rewritten and ingested like any other file."""
        first = not self._rows
        if ingest and not first:
            self._poll_slurm()
        snap = self._read(verify, ingest)
        if ingest and first and self._poll_slurm():
            snap = self._read(verify, ingest)
        return snap

    def _poll_slurm(self) -> int:
        """Refresh the records of live SLURM jobs; how many changed (0 when polled recently)."""
        from cdhpc.scheduler import LIVE_JOB_STATES
        from cdhpc.slurm import refresh_job_records

        now = time.monotonic()
        if now - self._last_poll < self.slurm_poll_s:
            return 0
        self._last_poll = now
        live = [j for j in self._rows.get("jobs", {}).values() if j["executor"] == "slurm" and j["state"] in LIVE_JOB_STATES]
        try:
            return refresh_job_records(self.workdir, live) if live else 0
        except (RuntimeError, OSError) as e:  # SLURM unreachable, or a read-only workdir: the last known states
            self.slurm_error = str(e)
            return 0

    def _read(self, verify: bool, ingest: bool) -> Snapshot:
        m = self.manifest()  # first: it may reset the caches below
        try:
            st = (self.workdir / "plan.json").stat()
        except FileNotFoundError:
            read_plan_steps(self.workdir)  # raises its one-line WorkdirError
            raise
        plan_sig, first = (st.st_mtime_ns, st.st_size), not self._rows
        full = ingest and not self._dirs  # the first ingest lists every file (Manifest.ingest)
        changed = self._changed_files() if ingest else []
        if plan_sig != self._plan_sig:
            self._steps = read_plan_steps(self.workdir)
        if first or full or changed or plan_sig != self._plan_sig:
            if plan_sig != self._plan_sig and ingest:
                m.register_plan(self._steps)
                self._plan_sig = plan_sig
            if full:
                m.ingest()
            if first or full:
                self._rows, self._intact = _query(m), {}
            else:
                self._requery(m, m.ingest_paths(changed))
        rows = self._rows
        states = fast_states(self.workdir, self._steps, rows["receipts"], rows["jobs"], rows["outputs"],
                             None if verify else self._intact)
        return Snapshot(self.workdir, self._steps, states, rows["receipts"], rows["jobs"], rows["val_ppl"],
                        rows["tokens"], rows["scores"], time.time())

    def _changed_files(self) -> list[str]:
        """Relative paths of receipts/job records added, replaced or removed since the last call."""
        changed = []
        for top in ("receipts", "jobs"):
            try:
                subdirs = [e for e in os.scandir(self.workdir / top) if e.is_dir()]
            except FileNotFoundError:
                continue
            for d in subdirs:
                rel, mtime = f"{top}/{d.name}", d.stat().st_mtime_ns
                if self._dirs.get(rel) == mtime:
                    continue
                self._dirs[rel] = mtime
                now = {f"{rel}/{e.name}": e.inode() for e in os.scandir(d.path) if e.name.endswith(".json")}
                old = {p: i for p, i in self._inodes.items() if p.startswith(rel + "/")}
                changed += [p for p in now.keys() | old.keys() if now.get(p) != old.get(p)]
                self._inodes.update(now)
                for p in old.keys() - now.keys():
                    del self._inodes[p]
        return sorted(changed)

    def _requery(self, m: Any, keys: set[str]) -> None:
        """Replace the cached rows of the given steps with the manifest's."""
        fresh = _query(m, sorted(keys))
        for table, rows in self._rows.items():
            for key in keys:
                rows.pop(key, None)
            rows.update(fresh[table])
        for key in keys:
            self._intact.pop(key, None)


def read_plan_steps(workdir: Path) -> list[dict[str, Any]]:
    """plan.json's step dicts. Raises WorkdirError (one line) when it is not what a launcher writes."""
    from cdhpc.lock import WorkdirError

    path = workdir / "plan.json"
    try:
        return json.loads(path.read_text())["steps"]
    except FileNotFoundError:
        raise WorkdirError(f"cdhpc: {path} does not exist; launch the sweep once to write it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f"cdhpc: {path} is not the plan a launcher writes ({e}); "
                           "run the sweep's launch command again to rewrite it (its steps are kept)") from None


def fast_states(workdir: Path, steps: list[dict], receipts: dict[str, Any], jobs: dict[str, Any],
                outputs: dict[str, list[dict]], intact_cache: dict[str, bool] | None = None) -> dict[str, str]:
    """scheduler.step_states for many steps: the same states (scheduler.classify); outputs are
    checked by os.stat (re-hashed only when size or mtime changed) unless `intact_cache` already
    holds the step's answer (it is filled in), and pids are probed only for live job records."""
    from cdhpc.receipts import OutputFile, output_intact
    from cdhpc.scheduler import classify, job_alive

    root, states, cache = str(workdir), {}, {} if intact_cache is None else intact_cache
    for s in steps:
        key = s["key"]
        r, j = receipts.get(key), jobs.get(key)
        intact = None
        if r is not None and r["status"] == "ok":
            if key not in cache:
                cache[key] = all(_intact(root, o) or output_intact(workdir, OutputFile(**o)) for o in outputs.get(key, []))
            intact = outputs.get(key, []) if cache[key] else None
        states[key] = classify(r, intact, j, job_alive(j))
    return states


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _intact(root: str, out: dict) -> bool:
    try:
        st = os.stat(os.path.join(root, out["path"]))
    except FileNotFoundError:
        return False
    return st.st_size == out["bytes"] and st.st_mtime_ns == out["mtime_ns"]


RECEIPT_COLUMNS = "key, stage, name, status, started, finished, runtime_s, host, attempt, error, stdout, stderr"


def _query(m: Any, keys: list[str] | None = None) -> dict[str, dict]:
    """The manifest rows the status views need (of the given steps only, if `keys`)."""
    where = "" if keys is None else f" WHERE key IN ({','.join('?' * len(keys))})"
    args = keys or []

    def q(sql: str) -> Any:
        return m.db.execute(sql.format(where=where), args)

    outputs: dict[str, list[dict]] = {}
    for r in q("SELECT key, path, sha256, bytes, mtime_ns FROM outputs{where} ORDER BY key, path"):
        outputs.setdefault(r[0], []).append({"path": r[1], "sha256": r[2], "bytes": r[3], "mtime_ns": r[4]})
    return {
        "receipts": {r["key"]: r for r in q(f"SELECT {RECEIPT_COLUMNS} FROM receipts{{where}}")},
        "jobs": {r["key"]: r for r in q("SELECT * FROM jobs{where}")},
        "outputs": outputs,
        "val_ppl": {k: v for k, v in q("SELECT key, val_ppl FROM checkpoints{where} ORDER BY key, step")},
        "tokens": {k: v for k, v in q("SELECT key, SUM(tokens) FROM shards{where} GROUP BY key")},
        "scores": {k: v for k, v in q("SELECT key, score FROM scores{where}")},
    }


def sweep_states(workdir: Path) -> tuple[list[dict], dict[str, str], dict[str, dict]]:
    """(planned step dicts, state by key, receipt rows by key), after ingesting new receipts."""
    with SnapshotReader(workdir) as reader:
        snap = reader.read()
    return snap.steps, snap.states, snap.receipts


def stage_counts(steps: list[dict], states: dict[str, str]) -> list[tuple[str, Counter]]:
    """Pure: per stage, how many steps are in each state."""
    counts: dict[str, Counter] = {}
    for s in steps:
        counts.setdefault(s["stage"], Counter())[states[s["key"]]] += 1
    return [(stage, counts[stage]) for stage in STAGES if stage in counts]


# ----------------------------------------------------------------------------- overview
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
    res = spec.get("resources") or {}
    return int(res.get("gpus_per_node") or 0) * int(res.get("nodes") or 1)


def _elapsed_s(steps: list[dict], snap: Snapshot, live: bool) -> float:
    starts, ends = [], []
    for s in steps:
        r, j = snap.receipts.get(s["key"]), snap.jobs.get(s["key"])
        if r is not None:
            starts.append(r["started"])
            ends.append(r["finished"])
        if j is not None and j["submitted"]:
            starts.append(j["submitted"])
    if not starts:
        return 0.0
    return max(0.0, (snap.now if live or not ends else max(ends)) - min(starts))


def remaining_estimate_s(runtimes_s: list[float], left: int, running: int) -> float | None:
    """Pure: time until `left` unfinished steps are done, at the mean runtime of the finished ones,
    `max(1, running)` at a time (s). None before any step has finished."""
    if left == 0:
        return 0.0
    if not runtimes_s:
        return None
    return sum(runtimes_s) / len(runtimes_s) * left / max(1, running)


def stage_overview(snap: Snapshot) -> list[StageRow]:
    """Pure: one row per stage with counts, elapsed and remaining time, tokens and GPU-hours."""
    by_stage: dict[str, list[dict]] = {}
    for s in snap.steps:
        by_stage.setdefault(s["stage"], []).append(s)
    out = []
    for stage in [st for st in STAGES if st in by_stage] + sorted(set(by_stage) - set(STAGES)):
        steps = by_stage[stage]
        counts = Counter(snap.states[s["key"]] for s in steps)
        done = [snap.receipts[s["key"]] for s in steps if snap.states[s["key"]] == "done"]
        live = counts["running"] + counts["queued"]
        gpu_h = sum((snap.receipts[s["key"]]["runtime_s"] or 0.0) * _gpus(s) for s in steps if s["key"] in snap.receipts) / 3600
        out.append(StageRow(stage, counts, len(steps), _elapsed_s(steps, snap, live > 0),
                            remaining_estimate_s([r["runtime_s"] for r in done], len(steps) - len(done), counts["running"]),
                            sum(snap.tokens.get(s["key"], 0) or 0 for s in steps), gpu_h))
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


# ----------------------------------------------------------------------------- plain mode
def print_status(workdir: Path) -> int:
    """``cdhpc status --once``: the per-stage table and the failed steps. Exit 1 if any failed."""
    from rich.console import Console
    from rich.table import Table

    with SnapshotReader(workdir) as reader:
        snap = reader.read()
    table = Table(title=f"{workdir.name}: {len(snap.steps)} steps")
    for col in ("stage", "done", "running", "queued", "failed", "to run", "total", "elapsed", "remaining", "GPU-h"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in stage_overview(snap):
        c = row.counts
        table.add_row(row.stage, str(c["done"]), str(c["running"]), str(c["queued"]), str(c["failed"]),
                      str(c["missing"] + c["blocked"]), str(row.total), format_duration(row.elapsed_s),
                      format_duration(row.remaining_s), f"{row.gpu_hours:.2f}")
    console = Console(width=140)
    console.print(table)
    from cdhpc.metrics import print_training

    print_training(console, snap)  # running pretrain steps: latest step, loss, tokens/s
    failed = [s for s in snap.steps if snap.states[s["key"]] == "failed"]
    if failed:
        ft = Table(title=f"{len(failed)} failed step(s)")
        for col in ("stage", "name", "error", "log"):
            ft.add_column(col)
        for s in failed[:50]:
            r = snap.receipts.get(s["key"])
            ft.add_row(s["stage"], s["name"], failure_line(r)[:80], r["stdout"] or "" if r else "")
        console.print(ft)
    return 1 if failed else 0


def failure_line(receipt: Any) -> str:
    """Pure: the last line of a failed step's error, or why there is none."""
    if receipt is not None and receipt["status"] == "ok":  # failed only because its outputs changed since
        return "its outputs changed after its receipt was written; the next launch runs it again"
    err = ((receipt["error"] if receipt else None) or "no receipt: the job ended without writing one").strip()
    return err.splitlines()[-1] if err else "failed without an error message"

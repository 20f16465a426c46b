"""``python -m cdhpc.bench status [--steps N] [--repeats R]``: ``cdhpc status`` on a synthetic
workdir of N planned steps (80% done with receipts, outputs and job records, 5% failed, the rest
not started).

ours: one refresh after a new receipt arrived (ingest of what changed, query, step states), median
of R; the app's whole refresh (every view rebuilt, Steps tab shown) is reported beside it. peer: the naive
refresh, re-parsing every receipt
and job record JSON each time and checking outputs. Also measured: start-up to first render of
the app in a fresh process (the manifest already ingested, as the launcher leaves it), and the
cold first ingest of all receipts.

At the paper's size (``--big-steps``, 46,000): ``cdhpc status --once`` in a fresh process on a
workdir as the launcher leaves it (best wall time of R+1 runs, the first reported too, and the
largest peak RSS), beside the naive refresh at that size; and ``cdhpc cancel``'s own time to plan
the cancellation of every step as live SLURM array elements (scancel itself faked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cdhpc.sweep.workdir import Workdir

STAGE_MIX = (
    ("prepare", 1),
    ("tokenizer", 1),
    ("pretrain", 0.004),
    ("select", 0.002),
    ("generate", 0.2),
    ("corpus", 0.002),
    ("evaluate", None),
    ("aggregate", 1),
)


def plan_steps(n_steps: int) -> list[dict[str, Any]]:
    """Pure: n_steps step dicts shaped like plan.json's, stages in pipeline proportions."""
    counts = {
        st: (int(share) if share is not None and share >= 1 else int((share or 0) * n_steps))
        for st, share in STAGE_MIX
    }
    counts["evaluate"] = n_steps - sum(counts.values())
    steps = []
    for stage, n in counts.items():
        for i in range(n):
            params: dict[str, Any] = {"i": i}
            if stage == "evaluate":
                params = {
                    "method": f"m{i % 8}",
                    "synthetic_share": 0.3,
                    "seed": i % 3,
                    "step": 100 * (i // 24 % 50),
                    "task": f"task{i // 8 % 3}",
                    "run": f"m{i % 8}-s{i % 3}",
                }
            key = f"{len(steps):016x}"
            steps.append(
                {
                    "stage": stage,
                    "name": f"{stage}-{i:05d}",
                    "key": key,
                    "params": params,
                    "inputs": {},
                    "options": {},
                    "resources": {"gpus_per_node": 1 if stage in ("pretrain", "generate") else 0},
                }
            )
    return steps


def _rows(step: dict[str, Any], i: int) -> dict[str, list[dict]]:
    if step["stage"] == "evaluate":
        p = step["params"]
        return {
            "scores": [
                {
                    "run": p["run"],
                    "method": p["method"],
                    "seed": p["seed"],
                    "step": p["step"],
                    "task": p["task"],
                    "score": 50.0 + i % 17,
                }
            ]
        }
    if step["stage"] == "generate":
        return {"shards": [{"method": "m0", "shard": i, "tokens": 1000 + i}]}
    return {}


def write_step(workdir: Path, step: dict[str, Any], i: int, status: str, now: float) -> None:
    """One step's output file, receipt and job record (plain writes: a fixture, not a job)."""
    from cdhpc.base.atomicio import sha256_file
    from cdhpc.sweep.receipts import OutputFile, Receipt

    out = Workdir(workdir).step_dir(step["stage"], step["name"], step["key"]) / "out.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"output {i}\n")
    st = out.stat()
    outputs = [
        OutputFile(
            path=str(out.relative_to(workdir)),
            sha256=sha256_file(out),
            bytes=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )
    ]
    receipt = Receipt(
        key=step["key"],
        stage=step["stage"],
        name=step["name"],
        status=status,
        spec=step,
        outputs=outputs if status == "ok" else [],
        rows=_rows(step, i) if status == "ok" else {},
        started=now - 60 - i % 50,
        finished=now - i % 50,
        host=f"node{i % 7}",
        error=None if status == "ok" else "RuntimeError: synthetic failure",
    )
    path = Workdir(workdir).receipt(step["stage"], step["name"], step["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(receipt.model_dump_json(indent=1))
    job = Workdir(workdir).job_record(step["stage"], step["name"], step["key"])
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(
        json.dumps(
            {
                "key": step["key"],
                "executor": "local",
                "job_id": str(900000 + i),
                "array_index": None,
                "state": "COMPLETED" if status == "ok" else "FAILED",
                "attempt": 1,
                "submitted": now - 100,
                "updated": now,
                "stdout": None,
                "stderr": None,
            }
        )
    )


def build_workdir(workdir: Path, n_steps: int) -> list[dict[str, Any]]:
    """A synthetic workdir: plan.json, marker, and receipts for 80% done and 5% failed steps."""
    steps = plan_steps(n_steps)
    workdir.mkdir(parents=True, exist_ok=True)
    Workdir(workdir).marker.write_text(json.dumps({"sweep": "bench-status"}))
    Workdir(workdir).plan.write_text(
        json.dumps({"sweep": "bench-status", "until": "aggregate", "steps": steps})
    )
    now = time.time()
    for i, step in enumerate(steps):
        if i % 20 < 16:
            write_step(workdir, step, i, "ok", now)
        elif i % 20 == 16:
            write_step(workdir, step, i, "failed", now)
    return steps


def naive_refresh(workdir: Path) -> dict[str, str]:
    """The peer: every receipt and job record parsed again, outputs checked, states classified."""
    from cdhpc.sweep.receipts import read_receipt
    from cdhpc.sweep.stepstate import classify, output_ok

    wd = Workdir(workdir)
    steps = json.loads(wd.plan.read_text())["steps"]
    receipts = {r.key: r for r in map(read_receipt, sorted(wd.receipts.glob("*/*.json")))}
    jobs = {j["key"]: j for j in (json.loads(f.read_text()) for f in sorted(wd.job_records.glob("*/*.json")))}
    states = {}
    for s in steps:
        r, j = receipts.get(s["key"]), jobs.get(s["key"])
        intact = None
        if r is not None and r.status == "ok":
            ok = all(output_ok(str(workdir), o.path, o.sha256, o.bytes, o.mtime_ns) for o in r.outputs)
            intact = r.outputs if ok else None
        states[s["key"]] = classify(None if r is None else {"status": r.status}, intact, j, False)
    return states


STARTUP = """
import asyncio, sys, time
t0 = time.perf_counter()
from pathlib import Path
from cdhpc.ui.tui import StatusApp
async def main():
    app = StatusApp(Path(sys.argv[1]), refresh_s=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        print(app.first_paint - t0, app.query_one("#summary").render())
asyncio.run(main())
"""


async def _refresh_times(workdir: Path, steps: list[dict], repeats: int) -> dict[str, list[float]]:
    """Per new receipt: the snapshot read (ingest + query + states), the same with nothing new,
    and the app's whole refresh with the Steps tab shown (read + every view rebuilt) (s)."""
    from cdhpc.ui.tui import StatusApp

    pending = [i for i in range(len(steps)) if i % 20 > 16]
    app = StatusApp(workdir, refresh_s=3600)
    times: dict[str, list[float]] = {"read": [], "idle": [], "ui": []}
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        for n, i in enumerate(pending[: 2 * repeats]):
            write_step(workdir, steps[i], i, "ok", time.time())
            t0 = time.perf_counter()
            if n % 2:
                app.refresh_data()
                times["ui"].append(time.perf_counter() - t0)
                continue
            app.reader.read()
            times["read"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            app.reader.read()
            times["idle"].append(time.perf_counter() - t0)
    return times


def slurm_poll_parse_s(n_steps: int, live_share: float = 0.2) -> float:
    """Our own time in one SLURM poll of a sweep with `live_share` of its steps queued or running
    as array elements: parsing sacct's answer and deciding each record's state (s; sacct's own
    run time is the controller's, not ours)."""
    from cdhpc.executors.slurm_queue import parse_states, record_state

    n = int(n_steps * live_share)
    answer = "\n".join(f"{7000 + i // 100}_{i % 100}|{'RUNNING' if i % 3 else 'PENDING'}" for i in range(n))
    records = [
        {"job_id": str(7000 + i // 100), "array_index": i % 100, "state": "PENDING", "submitted": 0.0}
        for i in range(n)
    ]
    t0 = time.perf_counter()
    states = parse_states(answer)
    changed = sum(record_state(r, states, False, 1.0) != r["state"] for r in records)
    assert changed == sum(1 for i in range(n) if i % 3)
    return time.perf_counter() - t0


ONCE_PROBE = """
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
err = p.stderr.read().decode()[-2000:].replace(chr(10), " ")
print(wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status), err)
"""


def once_process(workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """`python -m cdhpc status W --once` in a fresh process: (wall s, peak RSS MB) of that process
    alone. A small probe process starts it and reads its rusage (os.wait4): started from this big
    process instead, a child's peak RSS would count this process's pages, copied at fork."""
    cmd = [sys.executable, "-c", ONCE_PROBE, sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"]
    wall, rss_kb, code, err = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=True
    ).stdout.split(" ", 3)
    if int(code) not in (0, 1):  # 1: the synthetic sweep has failed steps
        raise RuntimeError(f"cdhpc status --once failed: {err}")
    return float(wall), int(rss_kb) / 1024


def cancel_plan_s(n_steps: int, array_size: int = 100) -> float:
    """`cdhpc cancel`'s own time for a sweep of `n_steps` live SLURM array elements (arrays of
    `array_size`), every step chosen: the records scan and the scancel batches, with
    `subprocess.run` replaced by a recorder (scancel is the controller's time, not ours) (s)."""
    from cdhpc.ui import actions
    from cdhpc.ui.status import Snapshot

    jobs, steps, states = {}, [], {}
    for i in range(n_steps):
        key = f"{i:016x}"
        jobs[key] = {
            "key": key,
            "executor": "slurm",
            "job_id": str(7000 + i // array_size),
            "array_index": i % array_size,
            "state": "PENDING",
            "path": f"jobs/evaluate/s{i}-{key[:8]}.json",
            "submitted": 0.0,
        }
        steps.append({"key": key, "stage": "evaluate", "name": f"s{i}"})
        states[key] = "queued"
    snap = Snapshot(workdir=Path("."), steps=steps, states=states, jobs=jobs)
    calls: list[list[str]] = []
    real, actions.subprocess.run = (
        actions.subprocess.run,
        lambda cmd, **kw: calls.append(cmd),
    )  # a fake scancel
    try:
        t0 = time.perf_counter()
        actions.cancel_steps(snap, list(jobs))
        took = time.perf_counter() - t0
    finally:
        actions.subprocess.run = real
    ids = [i for cmd in calls for i in cmd[1:]]
    assert len(ids) == -(-n_steps // array_size), "every whole array cancelled by its own id"
    return took


def big_case(n_steps: int, repeats: int, env: dict[str, str]) -> dict[str, Any]:
    """`cdhpc status --once` at the paper's size, the manifest as a launcher leaves it (plan
    registered, everything ingested): best of `repeats` fresh processes, against the naive refresh
    in this process; and `cdhpc cancel`'s planning time at that size."""
    from cdhpc.sweep.manifest import Manifest

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "sweep"
        build_workdir(workdir, n_steps)
        with Manifest(workdir) as m:  # as launch.execute does
            m.register_plan(json.loads(Workdir(workdir).plan.read_text())["steps"])
            m.ingest()
        once = [once_process(workdir, env) for _ in range(repeats + 1)]
        t0 = time.perf_counter()
        naive_refresh(workdir)
        naive_s = time.perf_counter() - t0
    return {
        "once_steps": n_steps,
        "once_wall_s": min(w for w, _ in once),
        "once_peak_rss_mb": max(r for _, r in once),
        "once_first_wall_s": once[0][0],
        "once_naive_refresh_s": naive_s,
        "cancel_steps": n_steps,
        "cancel_plan_s": min(cancel_plan_s(n_steps) for _ in range(max(1, min(repeats, 3)))),
    }


def run(argv: list[str]) -> dict:
    import asyncio

    from cdhpc.sweep.manifest import Manifest

    p = argparse.ArgumentParser(prog="python -m cdhpc.bench status")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--big-steps", type=int, default=46_000, help="the `status --once` and cancel case (0: skip)"
    )
    p.add_argument("--device", default="cpu", help="ignored: status is CPU and disk only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "sweep"
        steps = build_workdir(workdir, args.steps)
        t0 = time.perf_counter()
        with Manifest(workdir) as m:
            m.register_plan(steps)
            m.ingest()
        cold_ingest_s = time.perf_counter() - t0
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", STARTUP, str(workdir)], capture_output=True, text=True, env=env, check=True
        )
        startup_wall_s = time.perf_counter() - t0
        times = asyncio.run(_refresh_times(workdir, steps, args.repeats))
        peer = []
        for _ in range(max(1, min(args.repeats, 3))):
            t0 = time.perf_counter()
            naive_refresh(workdir)
            peer.append(time.perf_counter() - t0)
    ours, theirs = statistics.median(times["read"]), statistics.median(peer)
    poll_s = slurm_poll_parse_s(args.steps)
    big = big_case(args.big_steps, args.repeats, env) if args.big_steps > 0 else {}
    return {
        "bench": "status",
        "device": "cpu",
        "ours": ours,
        "peer": theirs,
        "ratio": theirs / ours,
        "unit": "s per refresh (ingest+query+states, one new receipt); ratio = times faster",
        "steps": args.steps,
        "refresh_idle_s": statistics.median(times["idle"]),
        "ui_refresh_s": statistics.median(times["ui"]),
        "startup_first_render_s": float(out.stdout.split()[0]),
        "startup_process_wall_s": startup_wall_s,
        "slurm_poll_own_s": poll_s,
        "cold_ingest_s": cold_ingest_s,
        "repeats": args.repeats,
        **big,
    }

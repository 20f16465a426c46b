"""Accuracy bootstrap: ``cdhpc.results.stats.accuracy_bootstrap`` vs a naive loop over resamples.

Both use the same shared index sets (10,000 resamples x 67 UIDs x 1,000 items by default, the
size of BLiMP). The naive peer loops over resamples in Python and computes each UID's accuracy
per resample; it is timed on ``--peer-resamples`` resamples and extrapolated linearly to all of
them. The index draw is timed separately (it is done once per sweep and shared by every model).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from cdhpc.results import stats


def _naive(correct: dict[str, np.ndarray], idx: dict[str, np.ndarray], resamples: int) -> np.ndarray:
    out = np.empty(resamples)
    for b in range(resamples):
        out[b] = 100.0 * np.mean([correct[u][idx[u][b]].mean() for u in correct])
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cdhpc.bench bootstrap")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--uids", type=int, default=67)
    parser.add_argument("--items", type=int, default=1_000, help="items per UID")
    parser.add_argument(
        "--peer-resamples", type=int, default=200, help="resamples the naive loop is timed on"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error(
            "--device cuda: cdhpc.results.stats is numpy-only (CPU); run this benchmark with --device cpu"
        )
    return args


def run(argv: list[str]) -> dict:
    """Time ours and the naive peer side by side; returns the benchmark's JSON dict (seconds)."""
    args = _parse(argv)
    rng = np.random.default_rng(args.seed)
    sizes = {f"uid_{j:03d}": args.items for j in range(args.uids)}
    correct = {u: rng.random(n) < 0.7 for u, n in sizes.items()}

    start = time.perf_counter()
    idx = stats.draw_indices(sizes, args.resamples, args.seed)
    draw_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = stats.accuracy_bootstrap(correct, idx)
    ours_s = time.perf_counter() - start

    peer_b = min(args.peer_resamples, args.resamples)
    start = time.perf_counter()
    peer = _naive(correct, idx, peer_b)
    peer_s = (time.perf_counter() - start) * args.resamples / peer_b
    return {
        "bench": "bootstrap",
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)",
        "ours": round(ours_s, 3),
        "peer": round(peer_s, 3),
        "ratio": round(peer_s / ours_s, 1),
        "unit": "s per accuracy bootstrap (lower is better; ratio = times faster)",
        "draw_indices_s": round(draw_s, 3),
        "ours_with_draw_s": round(draw_s + ours_s, 3),
        "max_abs_diff_vs_peer": float(np.abs(ours[:peer_b] - peer).max()),
        "resamples": args.resamples,
        "uids": args.uids,
        "items_per_uid": args.items,
        "peer_measured_resamples": peer_b,
        "peer_extrapolated": peer_b < args.resamples,
    }

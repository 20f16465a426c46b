"""``python -m cdhpc.bench train``: our DeepSpeed training step vs a plain PyTorch loop.

Both run the same model (same seed), the same batches, AdamW with the same schedule, gradient
clipping 1.0 and the same gradient accumulation, alternating step by step in one process so
machine noise hits both alike; each rate comes from the median step time. ``ratio`` = ours / peer
tokens per second (1 - ratio = DeepSpeed's overhead). The peer on GPU keeps fp32 weights under
``torch.autocast(bf16)`` (PyTorch's own mixed precision) and ours bf16 weights with fp32 gradient
accumulation at ZeRO stage 1, as configs/paper.yaml; on CPU both run fp32 (ours at stage 0).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cdhpc.bench train")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default=None, help="default: tiny (cpu), llama-12x768 (cuda)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=None, help="default: 128 (cpu), 1024 (cuda)")
    parser.add_argument("--micro-batch", type=int, default=None, help="default: 4 (cpu), 16 (cuda)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--compile", action="store_true", help="torch.compile both (cuda only)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.preset = args.preset or ("llama-12x768" if cuda else "tiny")
    args.seq_len = args.seq_len or (1024 if cuda else 128)
    args.micro_batch = args.micro_batch or (16 if cuda else 4)
    args.precision = "bf16" if cuda else "fp32"
    return args


def _spec(args: argparse.Namespace):
    from cdhpc.lm.train import TrainSpec

    return TrainSpec(
        preset=args.preset,
        vocab_size=args.vocab_size,
        seed=0,
        steps=10**6,
        checkpoint_every=10**6,
        warmup_steps=10,
        global_batch=args.micro_batch * args.accumulation,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        precision=args.precision,
        # as configs/paper.yaml (bf16 weights, fp32 accumulation) and configs/tiny.yaml (fp32)
        deepspeed={"zero_optimization": {"stage": 1 if args.precision == "bf16" else 0}},
        compile=args.compile,
    )


class _PlainLoop:
    """The peer: model, AdamW, LambdaLR, clip, accumulate; nothing else. ``keep_grads`` zeroes the
    gradient buffers in place instead of PyTorch's default (and DeepSpeed's) ``grad = None``."""

    def __init__(self, spec, device: str, keep_grads: bool = False):
        import torch

        from cdhpc.lm.model import build_model
        from cdhpc.lm.train_engine import lr_at

        self.model = build_model(spec.preset, spec.vocab_size, seed=spec.seed).to(device)
        if spec.compile and device.startswith("cuda"):
            self.model = torch.compile(self.model)
        fused = {"fused": True} if device.startswith("cuda") else {}
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, **fused
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_at(s, spec) / spec.lr)
        self.device, self.bf16, self.keep_grads = device, spec.precision == "bf16", keep_grads

    def step(self, micro_batches: list) -> float:
        import torch
        import torch.nn.functional as F

        total = 0.0
        for rows in micro_batches:
            batch = torch.from_numpy(rows).to(self.device)
            with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=self.bf16):
                logits = self.model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            (loss / len(micro_batches)).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=not self.keep_grads)
        return total / len(micro_batches)


def _time_step(step_fn, micro_batches: list, device: str) -> float:
    """Seconds for one optimizer step (batches are read beforehand, outside the timing)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    begin = time.perf_counter()
    step_fn(micro_batches)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def run(argv: list[str]) -> dict:
    """Measure tokens/s and MFU of both loops; see the module docstring."""
    import numpy as np
    import torch

    from cdhpc.lm.data import MixedBatches, TokenArray, write_token_array
    from cdhpc.lm.model import mfu, peak_flops
    from cdhpc.lm.train import utilisation_key
    from cdhpc.lm.train_engine import build_engine, init_distributed, train_step

    args = _args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    spec = _spec(args)
    device, _, world_size = init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        write_token_array(
            Path(tmp) / "a",
            [rng.integers(4, args.vocab_size, 200_000)],
            args.vocab_size,
            {"kind": "benchmark"},
        )
        batches = MixedBatches(
            TokenArray.open(Path(tmp) / "a"),
            global_batch=spec.global_batch,
            micro_batch=spec.micro_batch,
            seq_len=spec.seq_len,
            seed=0,
        )
        ours = build_engine(spec, world_size, device)
        sides = {
            "ours": lambda mb: train_step(ours, mb),
            "peer": _PlainLoop(spec, device).step,
            "peer_keep_grads": _PlainLoop(spec, device, keep_grads=True).step,
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for step in range(args.warmup + args.steps):  # alternate step by step: noise hits all
            micro_batches = batches.micro_batches(step)
            shift = step % len(names)  # rotate who goes first (caches, allocator)
            for name in names[shift:] + names[:shift]:
                seconds = _time_step(sides[name], micro_batches, device)
                if step >= args.warmup:
                    times[name].append(seconds)
    tokens = spec.global_batch * spec.seq_len
    rate = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    peak = peak_flops(device, spec.precision)
    util = utilisation_key(device)  # mfu on a GPU; on a CPU the peak is a measured matmul rate
    return {
        "bench": "train",
        "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
        "ours": rate["ours"],
        "peer": rate["peer"],
        "ratio": rate["ours"] / rate["peer"],
        "unit": "tokens/s",
        "overhead": 1.0 - rate["ours"] / rate["peer"],
        "peer_keep_grads": rate["peer_keep_grads"],
        "ratio_vs_keep_grads": rate["ours"] / rate["peer_keep_grads"],
        f"{util}_ours": mfu(rate["ours"], spec.preset, spec.vocab_size, spec.seq_len, peak),
        f"{util}_peer": mfu(rate["peer"], spec.preset, spec.vocab_size, spec.seq_len, peak),
        "peak_flops": peak,
        "preset": spec.preset,
        "vocab_size": spec.vocab_size,
        "seq_len": spec.seq_len,
        "micro_batch": spec.micro_batch,
        "accumulation": args.accumulation,
        "precision": spec.precision,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "compile": args.compile,
    }

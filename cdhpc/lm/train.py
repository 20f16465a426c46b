"""The DeepSpeed pretraining loop: one code path for CPU (gloo) and GPU (nccl), one or many ranks.

Pure helpers (``lr_at``, ``deepspeed_config``, ``distributed_env``) render what the shell hands to
DeepSpeed; ``train`` is the shell. It writes HF checkpoints ``out_dir/checkpoints/step_<N>`` and the
latest DeepSpeed checkpoint ``out_dir/ds/`` (``cdhpc.lm.train_checkpoints``), and one line per optimizer
step to ``out_dir/metrics.jsonl`` (``cdhpc.lm.metrics``), plus the trackers ``report_to`` names.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from cdhpc.lm.data import MixedBatches, TokenArray
from cdhpc.lm.model import ModelPreset, build_model, flops_per_token, get_preset, peak_flops
from cdhpc.lm.train_checkpoints import existing_checkpoints, resume, save_ds, save_hf

PRECISIONS = ("bf16", "fp32")
_CLIENT_OWNED_KEYS = ("optimizer", "scheduler")


@dataclass
class TrainSpec:
    """Everything a pretrain step needs, plain data (docs/method.md §3 defaults)."""

    preset: ModelPreset | str  # a preset or its name in cdhpc.lm.model.PRESETS
    vocab_size: int
    seed: int
    steps: int  # optimizer steps
    checkpoint_every: int  # optimizer steps between checkpoints (+ one at the end)
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.1  # applied to every parameter, as the authors do
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 150
    global_batch: int = 256  # sequences per optimizer step, over all ranks
    micro_batch: int = 16  # sequences per forward pass per rank
    seq_len: int = 1024  # tokens per sequence
    precision: str = "bf16"  # bf16 | fp32
    deepspeed: dict = field(default_factory=dict)  # the sweep's DeepSpeed block, merged last
    synthetic_share: float = 0.0  # fraction of synthetic sequences per global batch
    mix_rounding: str = "exact"  # exact | per_device (the authors' quirk)
    log_every: int = 10  # optimizer steps
    val_batches: int = 8  # validation micro-batches at each checkpoint
    compile: bool = False  # torch.compile the model (GPU only)


def lr_at(step: int, spec: TrainSpec) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up ``lr * step / warmup``
    (as HF's cosine schedule, which the authors' Trainer used), then cosine to ``min_lr`` at
    ``spec.steps``."""
    if step < spec.warmup_steps:
        return spec.lr * step / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps))
    return spec.min_lr + 0.5 * (spec.lr - spec.min_lr) * (1.0 + math.cos(math.pi * progress))


def grad_accumulation(spec: TrainSpec, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: ``global_batch / (micro_batch * world_size)``."""
    per_round = spec.micro_batch * world_size
    if spec.global_batch % per_round:
        raise ValueError(f"global_batch={spec.global_batch} is not a multiple of micro_batch x "
                         f"world_size = {spec.micro_batch} x {world_size}; change global_batch or "
                         f"micro_batch")
    return spec.global_batch // per_round


def _merge(base: dict, override: Mapping) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(
            out.get(key), dict) else value
    return out


def deepspeed_config(spec: TrainSpec, world_size: int) -> dict:
    """The DeepSpeed config: batch sizes, clipping 1.0, precision, ZeRO stage 0, then the sweep's
    ``deepspeed`` block merged over it (its keys win). Optimizer and scheduler come from the spec."""
    if spec.precision not in PRECISIONS:
        raise ValueError(f"precision={spec.precision!r}: allowed values are {', '.join(PRECISIONS)} "
                         f"(fp16 is unsupported on CPU and not used by the paper)")
    owned = [k for k in _CLIENT_OWNED_KEYS if k in spec.deepspeed]
    if owned:
        raise ValueError(f"deepspeed.{owned[0]}: not allowed; the optimizer (AdamW) and the cosine "
                         f"schedule are set by lr, min_lr, betas, weight_decay and warmup_steps")
    base = {
        "train_batch_size": spec.global_batch,
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": grad_accumulation(spec, world_size),
        "gradient_clipping": 1.0,
        "bf16": {"enabled": spec.precision == "bf16"},
        "zero_optimization": {"stage": 0},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    config = _merge(base, spec.deepspeed)
    if config["zero_optimization"].get("stage") == 3:
        config["zero_optimization"].setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config


def distributed_env(environ: Mapping[str, str], free_port: int) -> dict[str, str]:
    """torch.distributed variables to set. A single-process run is rank 0 of 1 on localhost at
    ``free_port``, whatever it inherited; a multi-process run (WORLD_SIZE > 1) brings its own."""
    world_size = int(environ.get("WORLD_SIZE", "1"))
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if world_size > 1 and missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: a multi-process "
                           f"run must set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT")
    if world_size == 1:  # nobody to meet: never reuse an inherited port (parallel runs would collide)
        return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port)}
    return {"LOCAL_RANK": environ["RANK"]} if "LOCAL_RANK" not in environ else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init_distributed() -> tuple[str, int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (device, rank, world_size)."""
    import deepspeed
    import torch

    os.environ.update(distributed_env(os.environ, _free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device, backend = f"cuda:{os.environ['LOCAL_RANK']}", "nccl"
    else:
        # Without this, DeepSpeed JIT-builds its shared-memory allreduce (~30 s) at every init.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        device, backend = "cpu", "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    return device, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def build_engine(spec: TrainSpec, world_size: int, device: str):
    """Model + AdamW + warm-up/cosine LambdaLR wrapped by ``deepspeed.initialize``."""
    import deepspeed
    import torch

    model = build_model(spec.preset, spec.vocab_size, seed=spec.seed)
    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=tuple(spec.betas),
                                  weight_decay=spec.weight_decay, **fused)

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, spec) / spec.lr)

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=deepspeed_config(spec, world_size))
    if world_size == 1 and engine.zero_optimization_stage() == 0 and spec.precision == "fp32":
        # One rank, plain fp32 gradients: the all-reduce is an identity copy (~2% of a CPU step).
        engine.enable_backward_allreduce = False
    if spec.compile and device.startswith("cuda"):
        engine.compile()
    return engine


def _loss(engine: Any, rows: Any) -> Any:  # a torch.Tensor (torch is imported inside)
    """Mean next-token cross-entropy of int64 rows ``[B, T + 1]`` (fp32 logits)."""
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(rows).to(engine.device)
    logits = engine(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def train_step(engine, micro_batches: list) -> tuple[float, float | None]:
    """One optimizer step over this rank's micro-batches; returns (their mean loss on this rank,
    the global gradient 2-norm before clipping, None where DeepSpeed keeps none)."""
    total, norm = 0.0, None
    for i, rows in enumerate(micro_batches):
        loss = _loss(engine, rows)
        engine.backward(loss)
        if i == len(micro_batches) - 1 and _norm_not_kept(engine):
            norm = _grad_norm(engine)
        engine.step()
        total += loss.item()
    norm = engine.get_global_grad_norm() if norm is None else norm
    return total / len(micro_batches), None if norm is None else float(norm)


def _norm_not_kept(engine) -> bool:
    """True where DeepSpeed clips without keeping the norm: plain fp32 without ZeRO (its bf16 and
    ZeRO optimizers record ``_global_grad_norm``; ``engine.clip_fp32_gradients`` drops it)."""
    return not (engine.bfloat16_enabled() or engine.fp16_enabled() or engine.zero_optimization())


def _grad_norm(engine) -> float:
    """2-norm of the (already all-reduced) gradients, as DeepSpeed's clipping computes it."""
    import torch

    norms = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _all_sum(values: list[float], device: str) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def validate(engine, val: TokenArray, spec: TrainSpec, rank: int, world_size: int) -> dict:
    """Loss/perplexity on ``val_batches`` fixed micro-batches of evenly spaced windows, split over
    ranks. Every rank runs the same number of forwards (ZeRO-3 gathers need all of them)."""
    import torch

    m, length = spec.micro_batch, spec.seq_len + 1
    starts = val.fixed_starts(spec.val_batches * m, length)
    loss_sum = weight = 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(rank, -(-spec.val_batches // world_size) * world_size, world_size):
            used = b < spec.val_batches
            rows = val.windows(starts[(b if used else 0) * m:((b if used else 0) + 1) * m], length)
            loss = _loss(engine, rows).item()
            loss_sum, weight = loss_sum + used * loss, weight + used
    engine.train()
    loss_sum, weight = _all_sum([loss_sum, weight], str(engine.device))
    val_loss = loss_sum / weight
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_tokens": int(weight) * m * spec.seq_len}


def _open_batches(spec: TrainSpec, train_array: Path, synthetic_array: Path | None) -> MixedBatches:
    return MixedBatches(TokenArray.open(train_array),
                        TokenArray.open(synthetic_array) if synthetic_array else None,
                        global_batch=spec.global_batch, seq_len=spec.seq_len, seed=spec.seed,
                        share=spec.synthetic_share, micro_batch=spec.micro_batch,
                        rounding=spec.mix_rounding)


@dataclass
class _Run:
    """What the step loop needs besides the spec: the world and where to write."""

    engine: object
    batches: MixedBatches
    val: TokenArray
    rank: int
    world_size: int
    device: str
    tokenizer_dir: Path
    out_dir: Path
    say: Callable[[str], None]
    peak: float | None = None  # FLOP/s of all ranks; None for a GPU of unknown peak
    metrics: Any = None  # rank 0's cdhpc.lm.metrics.MetricsLog


def utilisation_key(device: str) -> str:
    """What achieved over peak FLOP/s is called: ``mfu`` on a GPU (its data-sheet peak), and
    ``matmul_utilisation`` on a CPU, whose "peak" is a measured matmul rate: not an MFU."""
    return "mfu" if str(device).startswith("cuda") else "matmul_utilisation"


def _peak(device: str, precision: str, world_size: int) -> float | None:
    try:
        return peak_flops(device, precision) * world_size
    except KeyError:  # a GPU without a known data-sheet peak: no MFU rather than a wrong one
        return None


def _flush(run: _Run, pending: list[dict]) -> list[float]:
    """Average the pending records' losses over ranks (one collective), write them (rank 0) and
    return those losses."""
    losses = [r["loss"] for r in pending]
    if run.world_size > 1 and pending:
        losses = [total / run.world_size for total in _all_sum(losses, run.device)]
    for record, loss in zip(pending, losses):
        record["loss"] = loss
    if run.metrics is not None:
        run.metrics.write(pending)
    pending.clear()
    return losses


def _record(spec: TrainSpec, run: _Run, step: int, loss: float, norm: float | None, elapsed: float) -> dict:
    """One metrics.jsonl line (see cdhpc.lm.metrics) before its loss is averaged over ranks."""
    tokens = spec.global_batch * spec.seq_len
    rate = tokens / elapsed
    util = {utilisation_key(run.device): rate * flops_per_token(spec.preset, spec.vocab_size, spec.seq_len) / run.peak
            } if run.peak else {}
    return {"step": step, "tokens": step * tokens, "loss": loss, "lr": lr_at(step - 1, spec), "grad_norm": norm,
            "tokens_per_s": rate, **util, "time": time.time()}


def _run_steps(spec: TrainSpec, run: _Run, start: int, stop: int) -> float:
    """Optimizer steps ``start + 1 .. stop`` with metrics, logging and checkpoints; returns the
    seconds spent in training steps (checkpoints and validation excluded). Metrics are written
    before the checkpoint of their step, so a resumed run finds every step up to it."""
    flops = flops_per_token(spec.preset, spec.vocab_size, spec.seq_len)
    tokens_per_step = spec.global_batch * spec.seq_len
    step_s = window_s = 0.0
    pending: list[dict] = []
    window: list[float] = []  # losses since the last log line (a resumed run's first is shorter)
    for step in range(start + 1, stop + 1):
        begin = time.perf_counter()
        loss, norm = train_step(run.engine, run.batches.micro_batches(step - 1, run.rank, run.world_size))
        elapsed = time.perf_counter() - begin
        step_s, window_s = step_s + elapsed, window_s + elapsed
        pending.append(_record(spec, run, step, loss, norm, elapsed))
        checkpoint = step % spec.checkpoint_every == 0 or step == spec.steps
        if checkpoint:
            val = validate(run.engine, run.val, spec, run.rank, run.world_size)
            pending[-1].update(val_loss=val["val_loss"], val_ppl=val["val_ppl"])
        if checkpoint or step % spec.log_every == 0 or step == stop:
            window += _flush(run, pending)
        if step % spec.log_every == 0:
            rate = len(window) * tokens_per_step / window_s
            util = f" {utilisation_key(run.device)} {rate * flops / run.peak:.3f}" if run.peak else ""
            run.say(f"step {step} loss {sum(window) / len(window):.4f} lr {lr_at(step - 1, spec):.3e} "
                    f"tokens/s {rate:,.0f}{util}")
            window_s, window = 0.0, []
        if checkpoint:
            save_hf(run.engine, spec, step, run.rank, run.tokenizer_dir, run.out_dir, val)
            save_ds(run.engine, run.out_dir / "ds", step, run.rank, run.world_size)
            run.say(f"checkpoint step_{step} val_loss {val['val_loss']:.4f} ppl {val['val_ppl']:.2f}")
    return step_s


def _open_metrics(run: _Run, start: int, report_to: Sequence[str], run_info: Mapping[str, Any] | None) -> None:
    """Rank 0 writes metrics.jsonl (and what ``report_to`` asks for), continuing after ``start``."""
    from cdhpc.lm.metrics import MetricsLog
    from cdhpc.lm.trackers import open_trackers

    if run.rank == 0:
        trackers = open_trackers(report_to, run.out_dir, start, run_info or {})
        run.metrics = MetricsLog(run.out_dir, start, csv="csv" in report_to, trackers=trackers)


def train(spec: TrainSpec, *, tokenizer_dir: Path, train_array: Path, val_array: Path,
          synthetic_array: Path | None, out_dir: Path, log: Callable[[str], None] = print,
          stop_after: int | None = None, report_to: Sequence[str] = (),
          run_info: Mapping[str, Any] | None = None) -> dict:
    """Pretrain (or resume, from ``out_dir/ds``) one run; see the module docstring for what is
    written. ``stop_after`` ends this process's work after that optimizer step, as a preemption
    would (tests, drills); the next call resumes from the last checkpoint. ``report_to``: trackers
    of ``cdhpc.lm.trackers`` fed the metrics, tagged from ``run_info`` (sweep, run, method, seed, key)."""
    import deepspeed.utils
    import transformers

    get_preset(spec.preset)  # fail on an unknown preset before any process group exists
    deepspeed.utils.logger.setLevel("WARNING")
    transformers.utils.logging.disable_progress_bar()
    device, rank, world_size = _init_distributed()
    out_dir = Path(out_dir)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    engine = build_engine(spec, world_size, device)
    run = _Run(engine, _open_batches(spec, train_array, synthetic_array), TokenArray.open(val_array),
               rank, world_size, device, Path(tokenizer_dir), out_dir,
               log if rank == 0 else (lambda _msg: None), _peak(device, spec.precision, world_size))
    start = resume(engine, out_dir / "ds", world_size)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())  # ZeRO-3
    run.say(f"train: device={device} world_size={world_size} grad_accumulation="
            f"{grad_accumulation(spec, world_size)} params={params} start_step={start}")
    stop = max(start, min(spec.steps, stop_after or spec.steps))
    _open_metrics(run, start, report_to, run_info)
    try:
        step_s = _run_steps(spec, run, start, stop)
    finally:
        if run.metrics is not None:
            run.metrics.close()
    tokens_per_s = (stop - start) * spec.global_batch * spec.seq_len / step_s if step_s else 0.0
    util = {utilisation_key(device): tokens_per_s * flops_per_token(spec.preset, spec.vocab_size, spec.seq_len)
            / run.peak} if run.peak else {}
    return {"checkpoints": existing_checkpoints(out_dir), "steps": stop, "params": params,
            "realised_synthetic_share": run.batches.realised_share(stop),
            "tokens": stop * spec.global_batch * spec.seq_len, "tokens_per_s": tokens_per_s,
            "world_size": world_size, "device": device, **util}

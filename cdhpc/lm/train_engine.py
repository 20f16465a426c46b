"""The DeepSpeed engine of the pretraining loop: the learning-rate schedule, the DeepSpeed config,
the process group, the engine (model, AdamW, schedule), one optimizer step and validation.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cdhpc.lm.model import build_model

if TYPE_CHECKING:
    from cdhpc.lm.data import TokenArray
    from cdhpc.lm.train import TrainSpec

PRECISIONS = ("bf16", "fp32")
_CLIENT_OWNED_KEYS = ("optimizer", "scheduler")


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
        raise ValueError(
            f"global_batch={spec.global_batch} is not a multiple of micro_batch x "
            f"world_size = {spec.micro_batch} x {world_size}; change global_batch or "
            f"micro_batch"
        )
    return spec.global_batch // per_round


def _merge(base: dict, override: Mapping) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), dict)
            else value
        )
    return out


def with_accumulation_dtype(precision: str, deepspeed: Mapping) -> dict:
    """The sweep's DeepSpeed block with ``data_types.grad_accum_dtype`` filled in: with bf16
    weights, gradients accumulate in fp32 over the micro-batches of a step (DeepSpeed's
    BF16_Optimizer at ZeRO 1, fp32 buffers at ZeRO 2 and 3), as under the authors' bf16 Trainer;
    DeepSpeed's own default accumulates in bf16. ZeRO stage 0 has no fp32 accumulation for bf16,
    so bf16 there is an error unless the block says ``grad_accum_dtype: bf16`` (opting in)."""
    types = deepspeed.get("data_types") or {}
    chosen = types.get("grad_accum_dtype") if isinstance(types, Mapping) else None
    zero = deepspeed.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    if chosen not in (None, "fp32", "bf16"):
        raise ValueError(f"data_types.grad_accum_dtype={chosen!r}: allowed values are fp32, bf16")
    if precision == "fp32":
        if chosen == "bf16":
            raise ValueError(
                "data_types.grad_accum_dtype='bf16' with precision fp32: fp32 weights accumulate "
                "gradients in fp32 (drop the key)"
            )
        return dict(deepspeed)
    if chosen is None and stage == 0:
        raise ValueError(
            "precision bf16 with zero_optimization.stage 0: DeepSpeed would accumulate gradients "
            "in bf16. Use stage 1 (fp32 accumulation), or set data_types.grad_accum_dtype: bf16 "
            "to accept bf16 accumulation"
        )
    if chosen == "fp32" and stage == 0:
        raise ValueError(
            "data_types.grad_accum_dtype='fp32' with precision bf16 needs zero_optimization.stage "
            "1, 2 or 3 (DeepSpeed has no fp32 accumulation for bf16 at stage 0)"
        )
    return _merge(deepspeed, {"data_types": {"grad_accum_dtype": chosen or "fp32"}})


def deepspeed_config(spec: TrainSpec, world_size: int) -> dict:
    """The DeepSpeed config: batch sizes, clipping 1.0, precision, ZeRO stage 0, then the sweep's
    ``deepspeed`` block merged over it (its keys win), with the gradient accumulation dtype of
    `with_accumulation_dtype`. Optimizer and scheduler come from the spec."""
    if spec.precision not in PRECISIONS:
        raise ValueError(
            f"precision={spec.precision!r}: allowed values are {', '.join(PRECISIONS)} "
            f"(fp16 is unsupported on CPU and not used by the paper)"
        )
    owned = [k for k in _CLIENT_OWNED_KEYS if k in spec.deepspeed]
    if owned:
        raise ValueError(
            f"deepspeed.{owned[0]}: not allowed; the optimizer (AdamW) and the cosine "
            f"schedule are set by lr, min_lr, betas, weight_decay and warmup_steps"
        )
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
    config = _merge(base, with_accumulation_dtype(spec.precision, spec.deepspeed))
    if config["zero_optimization"].get("stage") == 3:
        config["zero_optimization"].setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config


def distributed_env(environ: Mapping[str, str], free_port: int) -> dict[str, str]:
    """torch.distributed variables to set. A single-process run is rank 0 of 1 on localhost at
    ``free_port``, whatever it inherited; a multi-process run (WORLD_SIZE > 1) brings its own."""
    world_size = int(environ.get("WORLD_SIZE", "1"))
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if world_size > 1 and missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: a multi-process "
            f"run must set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"
        )
    if world_size == 1:  # nobody to meet: never reuse an inherited port (parallel runs would collide)
        return {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port),
        }
    return {"LOCAL_RANK": environ["RANK"]} if "LOCAL_RANK" not in environ else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[str, int, int]:
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
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay, **fused
    )

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, spec) / spec.lr)

    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(spec, world_size)
    )
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


def all_sum(values: list[float], device: str) -> list[float]:
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
            rows = val.windows(starts[(b if used else 0) * m : ((b if used else 0) + 1) * m], length)
            loss = _loss(engine, rows).item()
            loss_sum, weight = loss_sum + used * loss, weight + used
    engine.train()
    loss_sum, weight = all_sum([loss_sum, weight], str(engine.device))
    val_loss = loss_sum / weight
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_tokens": int(weight) * m * spec.seq_len}

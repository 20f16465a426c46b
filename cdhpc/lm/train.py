"""The DeepSpeed pretraining loop: one code path for CPU (gloo) and GPU (nccl), one or many ranks.

Pure helpers (``lr_at``, ``deepspeed_config``, ``distributed_env``, in ``cdhpc.lm.train_engine`` with
the engine) render what the shell hands to DeepSpeed; ``train`` is the shell. It writes HF checkpoints
``out_dir/checkpoints/step_<N>`` and the latest DeepSpeed checkpoint ``out_dir/ds/``
(``cdhpc.lm.train_checkpoints``), and one line per optimizer step to ``out_dir/metrics.jsonl``
(``cdhpc.lm.metrics``), plus the trackers ``report_to`` names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.base.verbosity import library_level
from cdhpc.lm.data import MixedBatches, TokenArray
from cdhpc.lm.model import ModelPreset, flops_per_token, get_preset, peak_flops
from cdhpc.lm.train_checkpoints import existing_checkpoints, resume, save_ds, save_hf
from cdhpc.lm.train_engine import (
    all_sum,
    build_engine,
    grad_accumulation,
    init_distributed,
    lr_at,
    train_step,
    validate,
)


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


def _open_batches(spec: TrainSpec, train_array: Path, synthetic_array: Path | None) -> MixedBatches:
    return MixedBatches(
        TokenArray.open(train_array),
        TokenArray.open(synthetic_array) if synthetic_array else None,
        global_batch=spec.global_batch,
        seq_len=spec.seq_len,
        seed=spec.seed,
        share=spec.synthetic_share,
        micro_batch=spec.micro_batch,
        rounding=spec.mix_rounding,
    )


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
        losses = [total / run.world_size for total in all_sum(losses, run.device)]
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
    util = (
        {
            utilisation_key(run.device): rate
            * flops_per_token(spec.preset, spec.vocab_size, spec.seq_len)
            / run.peak
        }
        if run.peak
        else {}
    )
    return {
        "step": step,
        "tokens": step * tokens,
        "loss": loss,
        "lr": lr_at(step - 1, spec),
        "grad_norm": norm,
        "tokens_per_s": rate,
        **util,
        "time": time.time(),
    }


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
            run.say(
                f"step {step} loss {sum(window) / len(window):.4f} lr {lr_at(step - 1, spec):.3e} "
                f"tokens/s {rate:,.0f}{util}"
            )
            window_s, window = 0.0, []
        if checkpoint:
            save_hf(run.engine, spec, step, run.rank, run.tokenizer_dir, run.out_dir, val)
            save_ds(run.engine, run.out_dir / "ds", step, run.rank, run.world_size)
            run.say(f"checkpoint step_{step} val_loss {val['val_loss']:.4f} ppl {val['val_ppl']:.2f}")
    return step_s


def _open_metrics(
    run: _Run, start: int, report_to: Sequence[str], run_info: Mapping[str, Any] | None
) -> None:
    """Rank 0 writes metrics.jsonl (and what ``report_to`` asks for), continuing after ``start``."""
    from cdhpc.lm.metrics import MetricsLog
    from cdhpc.lm.trackers import open_trackers

    if run.rank == 0:
        trackers = open_trackers(report_to, run.out_dir, start, run_info or {})
        run.metrics = MetricsLog(run.out_dir, start, csv="csv" in report_to, trackers=trackers)


def train(
    spec: TrainSpec,
    *,
    tokenizer_dir: Path,
    train_array: Path,
    val_array: Path,
    synthetic_array: Path | None,
    out_dir: Path,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    report_to: Sequence[str] = (),
    run_info: Mapping[str, Any] | None = None,
) -> dict:
    """Pretrain (or resume, from ``out_dir/ds``) one run; see the module docstring for what is
    written. ``stop_after`` ends this process's work after that optimizer step, as a preemption
    would (tests, drills); the next call resumes from the last checkpoint. ``report_to``: trackers
    of ``cdhpc.lm.trackers`` fed the metrics, tagged from ``run_info`` (sweep, run, method, seed, key)."""
    import deepspeed.utils
    import transformers

    get_preset(spec.preset)  # fail on an unknown preset before any process group exists
    library = library_level()  # INFO at -v (or debug), else WARNING or ERROR
    for ds_log in (deepspeed.utils.logger, *deepspeed.utils.logger.handlers):  # its own stdout handler
        ds_log.setLevel(library)
    transformers.utils.logging.disable_progress_bar()
    device, rank, world_size = init_distributed()
    out_dir = Path(out_dir)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    engine = build_engine(spec, world_size, device)
    run = _Run(
        engine,
        _open_batches(spec, train_array, synthetic_array),
        TokenArray.open(val_array),
        rank,
        world_size,
        device,
        Path(tokenizer_dir),
        out_dir,
        log if rank == 0 else (lambda _msg: None),
        _peak(device, spec.precision, world_size),
    )
    start = resume(engine, out_dir / "ds", world_size)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())  # ZeRO-3
    weights, accumulated = (str(t).removeprefix("torch.") for t in engine.get_data_types())
    run.say(
        f"train: device={device} world_size={world_size} grad_accumulation="
        f"{grad_accumulation(spec, world_size)} weights={weights} accumulate_in={accumulated} "
        f"params={params} start_step={start}"
    )
    stop = max(start, min(spec.steps, stop_after or spec.steps))
    _open_metrics(run, start, report_to, run_info)
    try:
        step_s = _run_steps(spec, run, start, stop)
    finally:
        if run.metrics is not None:
            run.metrics.close()
    tokens_per_s = (stop - start) * spec.global_batch * spec.seq_len / step_s if step_s else 0.0
    util = (
        {
            utilisation_key(device): tokens_per_s
            * flops_per_token(spec.preset, spec.vocab_size, spec.seq_len)
            / run.peak
        }
        if run.peak
        else {}
    )
    return {
        "checkpoints": existing_checkpoints(out_dir),
        "steps": stop,
        "params": params,
        "realised_synthetic_share": run.batches.realised_share(stop),
        "tokens": stop * spec.global_batch * spec.seq_len,
        "tokens_per_s": tokens_per_s,
        "world_size": world_size,
        "device": device,
        **util,
    }

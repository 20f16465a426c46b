"""GPU-hours of a step estimated from throughput, for ``--dry-run``: the figures ``bash .ci/gpu``
measured (its ``gpu.jsonl``, given as ``--calibration``) or, without one, documented defaults (the
targets of docs/gpu.md on one H100/H200). Pure, no torch.

- pretrain: training FLOPs (``flops_per_token`` x tokens) / achieved FLOP/s per GPU; data-parallel
  ranks share the work, so the GPU-hours do not depend on how many GPUs a step asks for.
- generate: generated tokens / the sampler's tokens per second (CD or plain sampling), scaled by
  the expert's matmul parameters against the calibrated preset's; x the step's GPUs.
- evaluate: one full-BLiMP-sized evaluation per step (BLiMP is the suite's largest task, so this
  over-estimates the others); x the step's GPUs. Model loading and job start-up are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdhpc.lm.model import ModelPreset, flops_per_token, get_preset

CAL_PRESET, CAL_VOCAB, CAL_SEQ = "llama-12x768", 32_000, 1024  # what .ci/gpu's benchmarks run
PEAK_FLOPS = 989e12  # H100/H200 SXM, bf16 dense (cdhpc.lm.model.GPU_PEAK_FLOPS)
DEFAULTS = {
    "train_flops_per_s": 0.40 * PEAK_FLOPS,  # the training target: MFU 40%
    "cd_tokens_per_s": 75_000.0,  # the CD target: batch 256, 400 new tokens, two 12x768 models
    "sample_tokens_per_s": 150_000.0,  # one model instead of two: twice the CD rate (assumed)
    "eval_blimp_s": 10.0,  # the evaluation target: full BLiMP with host work, 12x768
}
KINDS = {
    "train_flops_per_s": "training",
    "cd_tokens_per_s": "CD sampling",
    "sample_tokens_per_s": "plain sampling",
    "eval_blimp_s": "evaluation",
}


@dataclass(frozen=True)
class Rates:
    train_flops_per_s: float  # achieved training FLOP/s per GPU
    cd_tokens_per_s: float  # CD tokens/s of one GPU with two models of `preset`
    sample_tokens_per_s: float  # plain sampling tokens/s of one GPU, one model of `preset`
    eval_blimp_s: float  # seconds for a full-BLiMP-sized evaluation of a `preset` model
    preset: str
    source: str  # one line: where these numbers come from


def default_rates() -> Rates:
    return Rates(
        **DEFAULTS,
        preset=CAL_PRESET,
        source="documented defaults (docs/gpu.md: the targets on one H100/H200); "
        "--calibration gpu.jsonl uses measured figures",
    )


def rates_from_calibration(path: Path) -> Rates:
    """Rates from a ``gpu.jsonl``; figures it lacks (a part that did not finish) keep their
    defaults and the source line says which. Raises gpufigures.CalibrationError."""
    from cdhpc.ui.gpufigures import read_calibration

    figs = read_calibration(path)
    measured: dict[str, float] = {}
    if "train_tokens_per_s" in figs:
        ctx = figs["train_tokens_per_s"]["context"]
        measured["train_flops_per_s"] = figs["train_tokens_per_s"]["value"] * flops_per_token(
            ctx.get("preset") or CAL_PRESET,
            int(ctx.get("vocab_size") or CAL_VOCAB),
            int(ctx.get("seq_len") or CAL_SEQ),
        )
    for name in ("cd_tokens_per_s", "sample_tokens_per_s", "eval_blimp_s"):
        if name in figs:
            measured[name] = figs[name]["value"]
    if not measured:
        raise_missing(path)
    first = next(iter(figs.values()))
    source = f"measured, from {path} ({first['device']}, {first['date']}) for " + ", ".join(
        KINDS[k] for k in KINDS if k in measured
    )
    rest = [KINDS[k] for k in KINDS if k not in measured]
    if rest:
        source += "; documented defaults for " + ", ".join(rest) + " (not in the file)"
    return Rates(**(DEFAULTS | measured), preset=CAL_PRESET, source=source)


def raise_missing(path: Path) -> None:
    from cdhpc.ui.gpufigures import CalibrationError

    raise CalibrationError(
        f"{path}: none of train_tokens_per_s, cd_tokens_per_s, sample_tokens_per_s, "
        "eval_blimp_s has a value; run `bash .ci/gpu` on a GPU node to measure them"
    )


def _matmul_params(preset: ModelPreset | str, vocab: int) -> int:
    shape = get_preset(preset)
    return shape.n_params(vocab) - vocab * shape.hidden


def step_hours(step, cfg, rates: Rates) -> float:
    """Estimated GPU-hours of one planned step (0 for stages that use no GPU)."""
    r, p = step.resources, step.params
    gpus = r["nodes"] * r["gpus_per_node"]
    if not gpus:
        return 0.0
    if step.stage == "pretrain":
        t = p["train"]
        tokens = t["steps"] * t["global_batch"] * t["seq_len"]
        return (
            tokens
            * flops_per_token(ModelPreset(**p["preset"]), p["vocab_size"], t["seq_len"])
            / rates.train_flops_per_s
            / 3600
        )
    if step.stage == "generate":
        tokens = (p["prompts"][1] - p["prompts"][0]) * p["continuations"] * p["new_tokens"]
        rate = rates.cd_tokens_per_s if p["decoding"]["mode"] == "cd" else rates.sample_tokens_per_s
        vocab = cfg.tokenizer.vocab_size
        scale = _matmul_params(rates.preset, CAL_VOCAB) / _matmul_params(
            cfg.presets()[cfg.pretrain.model], vocab
        )
        return gpus * tokens / (rate * scale) / 3600
    if step.stage == "evaluate":
        return gpus * rates.eval_blimp_s / 3600
    return 0.0

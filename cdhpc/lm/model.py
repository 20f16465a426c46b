"""Model presets (docs/method.md §3) and the HF LlamaForCausalLM they build.

The preset table is plain data so the config validator and the dry-run can use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    """A LLaMA-style decoder shape (HF LlamaConfig defaults otherwise: RMSNorm, RoPE 10k, SiLU,
    untied embeddings, no GQA)."""

    layers: int
    hidden: int
    heads: int
    mlp: int
    context: int = 1024

    def n_params(self, vocab_size: int) -> int:
        """Parameter count: embeddings + untied head + per-layer attention/MLP/norms + final norm."""
        attn = 4 * self.hidden * self.hidden
        mlp = 3 * self.hidden * self.mlp
        norms = 2 * self.hidden
        return 2 * vocab_size * self.hidden + self.layers * (attn + mlp + norms) + self.hidden


# The paper's GOOD model and the amateurs named by the factor they are smaller; `tiny*` run on CPU.
PRESETS: dict[str, ModelPreset] = {
    "llama-12x768": ModelPreset(12, 768, 12, 3072),
    "small-5": ModelPreset(10, 512, 8, 2048),
    "small-10": ModelPreset(8, 384, 6, 1536),
    "small-20": ModelPreset(6, 256, 4, 1024),
    "small-50": ModelPreset(5, 224, 4, 896),
    "small-100": ModelPreset(4, 192, 3, 768),
    "tiny": ModelPreset(4, 128, 4, 512, context=128),
    "tiny-small": ModelPreset(2, 64, 2, 256, context=128),
}


def get_preset(preset: ModelPreset | str) -> ModelPreset:
    """The preset itself, or the one named in ``PRESETS``."""
    if isinstance(preset, ModelPreset):
        return preset
    if preset not in PRESETS:
        raise KeyError(f"model preset {preset!r} is unknown; known presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def llama_config(preset: ModelPreset | str, vocab_size: int, *, attn_implementation: str = "sdpa"):
    """The HF ``LlamaConfig`` of a preset: LLaMA defaults, RoPE theta 10,000, untied embeddings,
    ``<s>``=1 ``</s>``=2 ``<pad>``=3, context = ``max_position_embeddings``."""
    from transformers import LlamaConfig

    from cdhpc.base.thirdparty import set_attn_implementation

    shape = get_preset(preset)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    set_attn_implementation(config, attn_implementation)
    return config


def build_model(
    preset: ModelPreset | str, vocab_size: int, *, dtype=None, attn_implementation: str = "sdpa", seed: int
):
    """A freshly initialised ``LlamaForCausalLM`` of the preset's shape. The weights depend on
    ``seed`` only (the global torch RNG is left untouched); ``dtype`` defaults to fp32."""
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(preset, vocab_size, attn_implementation=attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype) if dtype is not None else model


def flops_per_token(preset: ModelPreset | str, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward, as PaLM (appendix B) and nanoGPT estimate them:
    ``6 N + 12 L H Q T`` with N the parameters that do matmuls (all but the input embedding, a
    lookup), L layers, H heads, Q head size, T the sequence length (attention scores)."""
    shape = get_preset(preset)
    matmul_params = shape.n_params(vocab_size) - vocab_size * shape.hidden
    head_dim = shape.hidden // shape.heads
    return 6.0 * matmul_params + 12.0 * shape.layers * shape.heads * head_dim * seq_len


def mfu(
    tokens_per_s: float, preset: ModelPreset | str, vocab_size: int, seq_len: int, peak_flops_per_s: float
) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak FLOP/s (both per whole job)."""
    return tokens_per_s * flops_per_token(preset, vocab_size, seq_len) / peak_flops_per_s


# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendors' data sheets (SXM parts).
GPU_PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
}


def peak_flops(device: str = "cpu", precision: str = "bf16") -> float:
    """Peak FLOP/s of one device of this process. CUDA: the data-sheet dense figure for the
    detected H100/H200/A100 (fp32 = TF32 tensor cores), ``KeyError`` for other GPUs. CPU: there is
    no data sheet to trust, so it is *measured*: the best fp32 matmul rate (1024^2 x 1024, ~0.1 s:
    every pretrain process measures it) at this process's torch thread count, a practical rather
    than theoretical peak."""
    import torch

    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in name:
                return peaks["fp32" if precision == "fp32" else "bf16"]
        raise KeyError(f"peak FLOP/s of GPU {name!r} unknown; known: {', '.join(GPU_PEAK_FLOPS)}")
    return _measured_cpu_peak(torch.get_num_threads())


_CPU_PEAK_CACHE: dict[int, float] = {}


def _measured_cpu_peak(threads: int, n: int = 1024, repeats: int = 5) -> float:
    import time

    import torch

    if threads not in _CPU_PEAK_CACHE:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = float("inf")
        for _ in range(repeats):
            begin = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - begin)
        _CPU_PEAK_CACHE[threads] = 2.0 * n**3 / best
    return _CPU_PEAK_CACHE[threads]

"""Model presets (PAPER.md section 1.3) and the HF LlamaForCausalLM they build.

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

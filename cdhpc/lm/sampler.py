"""Batched lockstep generation: expert and amateur advance on the same token history.

The Llama layers run here, with the HF modules' weights, over a preallocated KV cache that each
step writes into and attends over only up to the filled position (HF's DynamicCache re-concatenates
every step and StaticCache attends over the whole preallocated length; docs/design.md §10). Prompts
are left-padded; positions start at 0 at each prompt's first real token and pads are masked out
of attention. ``<s>``/``</s>`` are ordinary in-stream tokens: exactly ``new_tokens`` are generated.
Nothing synchronises with the host inside the token loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cdhpc.base.keys import derive_seed  # one seed derivation for the whole sweep
from cdhpc.lm.decoding import DecodingParams, next_tokens


@dataclass(frozen=True)
class _Layer:
    ln_in: Tensor
    qkv: Tensor
    qkv_bias: Tensor | None
    o: Tensor
    o_bias: Tensor | None
    ln_post: Tensor
    gate_up: Tensor
    gate_up_bias: Tensor | None
    down: Tensor
    down_bias: Tensor | None


def _cat_bias(*linears: Any) -> Tensor | None:
    biases = [lin.bias for lin in linears]
    return None if biases[0] is None else torch.cat([b.detach() for b in biases])


@dataclass(frozen=True)
class ModelWeights:
    """The weights of an HF ``LlamaForCausalLM`` in the layout the runner uses (q/k/v and
    gate/up fused into one matmul each), on one device in one dtype, plus the shape constants."""

    embed: Tensor
    layers: tuple[_Layer, ...]
    norm: Tensor
    lm_head: Tensor
    rotary: Any  # the HF rotary-embedding module (kept to build cos/sin tables)
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    max_positions: int

    @classmethod
    def from_hf(cls, model: Any, dtype: torch.dtype, device: str) -> ModelWeights:
        """Extract (copy, cast) the weights of ``model``, a ``LlamaForCausalLM``."""
        cfg = model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"model config hidden_act: got {cfg.hidden_act!r}; allowed: 'silu'")
        put = lambda t: t.detach().to(device=device, dtype=dtype)  # noqa: E731
        opt = lambda t: None if t is None else put(t)  # noqa: E731
        layers = []
        for layer in model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            layers.append(
                _Layer(
                    ln_in=put(layer.input_layernorm.weight),
                    qkv=put(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])),
                    qkv_bias=opt(_cat_bias(att.q_proj, att.k_proj, att.v_proj)),
                    o=put(att.o_proj.weight),
                    o_bias=opt(att.o_proj.bias),
                    ln_post=put(layer.post_attention_layernorm.weight),
                    gate_up=put(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
                    gate_up_bias=opt(_cat_bias(mlp.gate_proj, mlp.up_proj)),
                    down=put(mlp.down_proj.weight),
                    down_bias=opt(mlp.down_proj.bias),
                )
            )
        heads = cfg.num_attention_heads
        return cls(
            embed=put(model.model.embed_tokens.weight),
            layers=tuple(layers),
            norm=put(model.model.norm.weight),
            lm_head=put(model.lm_head.weight),
            rotary=model.model.rotary_emb,
            heads=heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_eps=cfg.rms_norm_eps,
            max_positions=cfg.max_position_embeddings,
        )

    @property
    def vocab_size(self) -> int:
        return self.lm_head.shape[0]


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF LlamaRMSNorm: normalise in float32, cast back, scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaRunner:
    """One model's forward over a preallocated KV cache, one batch at a time.

    ``attention_dropout > 0`` runs the attention with dropout on its probabilities (the
    CD-Drop amateur: the expert's weights in train mode), the masks drawn from the generator
    passed to ``prefill``/``step`` so runs are reproducible.
    """

    def __init__(self, weights: ModelWeights, attention_dropout: float = 0.0) -> None:
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"amateur_dropout: got {attention_dropout!r}; allowed: a number in [0, 1)")
        self.w = weights
        self.dropout = attention_dropout
        self.k_cache: list[Tensor] = []
        self.v_cache: list[Tensor] = []
        self.filled = 0

    def _start(self, n_pad: Tensor, batch: int, total: int) -> None:
        """Allocate the caches and the per-row rotary tables and key-validity mask."""
        w, dev, dt = self.w, self.w.embed.device, self.w.embed.dtype
        if total > w.max_positions:
            raise ValueError(
                f"prompt + new_tokens = {total} positions; the model's "
                f"max_position_embeddings is {w.max_positions}: shorten either"
            )
        shape = (batch, w.kv_heads, total, w.head_dim)
        self.k_cache = [torch.empty(shape, device=dev, dtype=dt) for _ in w.layers]
        self.v_cache = [torch.empty(shape, device=dev, dtype=dt) for _ in w.layers]
        steps = torch.arange(total, device=dev)
        self.valid = steps[None, :] >= n_pad[:, None]  # [B, total]: pads are never attended
        self.padded = bool(n_pad.max() > 0)  # one host sync per batch: unpadded batches skip masks
        positions = (steps[None, :] - n_pad[:, None]).clamp_(min=0)
        table_cos, table_sin = w.rotary(w.embed[:1], steps[None, :])  # [1, total, d]
        self.cos = table_cos[0][positions][:, None]  # [B, 1, total, d]
        self.sin = table_sin[0][positions][:, None]
        self.filled = 0

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, gen: torch.Generator | None
    ) -> Tensor:
        """Attention of ``q`` over the filled cache; ``mask`` None means "all keys" for one query
        and causal for a prompt."""
        gqa = {"enable_gqa": True} if self.w.kv_heads != self.w.heads else {}
        if self.dropout == 0.0:
            causal = mask is None and q.shape[2] > 1
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, **gqa)
        if mask is None:
            n_q, n_k = q.shape[2], k.shape[2]
            mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril_(n_k - n_q)
        if gqa:
            rep = self.w.heads // self.w.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) * self.w.head_dim**-0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        keep = torch.rand(att.shape, device=att.device, generator=gen) >= self.dropout
        return (att * keep / (1.0 - self.dropout)) @ v

    def _layer(self, i: int, x: Tensor, mask: Tensor | None, gen: torch.Generator | None) -> Tensor:
        w, lw = self.w, self.w.layers[i]
        b, t, _ = x.shape
        start, end = self.filled, self.filled + t
        h = F.linear(_rms(x, lw.ln_in, w.rms_eps), lw.qkv, lw.qkv_bias)
        q, k, v = h.split([w.heads * w.head_dim, w.kv_heads * w.head_dim, w.kv_heads * w.head_dim], -1)
        cos, sin = self.cos[:, :, start:end], self.sin[:, :, start:end]
        q = _rope(q.view(b, t, w.heads, w.head_dim).transpose(1, 2), cos, sin)
        self.k_cache[i][:, :, start:end] = _rope(
            k.view(b, t, w.kv_heads, w.head_dim).transpose(1, 2), cos, sin
        )
        self.v_cache[i][:, :, start:end] = v.view(b, t, w.kv_heads, w.head_dim).transpose(1, 2)
        o = self._attend(q, self.k_cache[i][:, :, :end], self.v_cache[i][:, :, :end], mask, gen)
        x = x + F.linear(o.transpose(1, 2).reshape(b, t, -1), lw.o, lw.o_bias)
        gate, up = F.linear(_rms(x, lw.ln_post, w.rms_eps), lw.gate_up, lw.gate_up_bias).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, lw.down, lw.down_bias)

    def _forward(self, ids: Tensor, mask: Tensor | None, gen: torch.Generator | None) -> Tensor:
        x = F.embedding(ids, self.w.embed)
        for i in range(len(self.w.layers)):
            x = self._layer(i, x, mask, gen)
        self.filled += ids.shape[1]
        return F.linear(_rms(x[:, -1], self.w.norm, self.w.rms_eps), self.w.lm_head).float()

    def prefill(self, ids: Tensor, n_pad: Tensor, total: int, gen: torch.Generator | None = None) -> Tensor:
        """Run the left-padded prompts ``ids [B, P]`` (``n_pad [B]`` pads each) into fresh caches
        sized for ``total`` positions; float32 next-token logits ``[B, V]``."""
        b, p = ids.shape
        self._start(n_pad, b, total)
        if not self.padded:
            return self._forward(ids, None, gen)
        causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril_()
        # A pad query attends to itself only, so no attention row is empty (NaN-free caches).
        mask = (causal & self.valid[:, None, None, :p]) | torch.eye(p, dtype=torch.bool, device=ids.device)
        return self._forward(ids, mask, gen)

    def step(self, token: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Append one token per row (``token [B]``); float32 next-token logits ``[B, V]``."""
        mask = self.valid[:, None, None, : self.filled + 1] if self.padded else None
        return self._forward(token[:, None], mask, gen)


def left_pad(prompts: list[list[int]], pad_id: int, device: str) -> tuple[Tensor, Tensor]:
    """``(ids [B, P] int64, n_pad [B] int64)``: prompts left-padded to the longest one."""
    width = max(len(x) for x in prompts)
    rows = [[pad_id] * (width - len(x)) + list(x) for x in prompts]
    n_pad = [width - len(x) for x in prompts]
    return torch.tensor(rows, device=device), torch.tensor(n_pad, device=device)


def _check_prompts(prompts: list[list[int]], vocab_size: int) -> None:
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token (e.g. <s>)")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompts[{i}] has token id {bad[0]}; allowed: 0 <= id < {vocab_size}")


def build_runners(
    expert: Any, amateur: Any, params: DecodingParams, *, amateur_dropout: float | None, device: str
) -> list[LlamaRunner]:
    """``[expert]`` or ``[expert, amateur]`` runners; bf16 weights on GPU, fp32 on CPU.

    CD needs exactly one amateur: a model, or ``amateur_dropout`` (the expert with attention
    dropout active, sharing the expert's weights).
    """
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if params.needs_amateur and (amateur is None) == (amateur_dropout is None):
        raise ValueError(
            "decoding.mode 'cd' needs exactly one amateur: a model or amateur_dropout; "
            f"got amateur={'a model' if amateur is not None else None}, "
            f"amateur_dropout={amateur_dropout!r}"
        )
    if not params.needs_amateur and (amateur is not None or amateur_dropout is not None):
        raise ValueError(
            f"decoding.mode {params.mode!r} uses no amateur; pass amateur=None and "
            f"amateur_dropout=None (got amateur_dropout={amateur_dropout!r})"
        )
    expert_w = ModelWeights.from_hf(expert, dtype, device)
    runners = [LlamaRunner(expert_w)]
    if amateur_dropout is not None:
        runners.append(LlamaRunner(expert_w, attention_dropout=amateur_dropout))
    elif amateur is not None:
        amateur_w = ModelWeights.from_hf(amateur, dtype, device)
        if amateur_w.vocab_size != expert_w.vocab_size:
            raise ValueError(
                f"amateur vocab_size {amateur_w.vocab_size} != expert vocab_size "
                f"{expert_w.vocab_size}; CD needs one shared tokenizer"
            )
        runners.append(LlamaRunner(amateur_w))
    return runners


def generate_batch(
    runners: list[LlamaRunner],
    prompts: list[list[int]],
    params: DecodingParams,
    *,
    new_tokens: int,
    seed: int,
    pad_id: int,
    device: str,
) -> Tensor:
    """Generated ids ``[len(prompts), new_tokens]`` (int64, CPU) for one batch of prompts.

    Token sampling and dropout masks draw from two generators seeded from ``seed`` only.
    """
    with torch.inference_mode():
        ids, n_pad = left_pad(prompts, pad_id, device)
        tokens_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "tokens"))
        dropout_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "dropout"))
        total = ids.shape[1] + new_tokens
        logits = [r.prefill(ids, n_pad, total, dropout_gen) for r in runners]
        out = torch.empty(len(prompts), new_tokens, dtype=torch.long, device=device)
        for t in range(new_tokens):
            token = next_tokens(logits[0], logits[1] if len(logits) > 1 else None, params, tokens_gen)
            out[:, t] = token
            if t + 1 < new_tokens:
                logits = [r.step(token, dropout_gen) for r in runners]
        return out.cpu()


def generate(
    expert: Any,
    amateur: Any,
    prompts: list[list[int]],
    params: DecodingParams,
    *,
    new_tokens: int,
    seed: int,
    batch_size: int = 64,
    pad_id: int = 3,
    amateur_dropout: float | None = None,
    device: str = "cpu",
) -> Iterator[tuple[list[int], Tensor]]:
    """Yields (indices into ``prompts``, generated ids ``[b, new_tokens]`` on CPU) per batch, in order.

    ``expert``/``amateur`` are HF ``LlamaForCausalLM`` (amateur None for ``sample``/``vhead``, or
    for ``cd`` with ``amateur_dropout``). Batch ``i`` (``batch_size`` consecutive prompts) is
    seeded from ``(seed, i)``: the same seed, prompts and batch size give identical ids.
    """
    if new_tokens < 1 or batch_size < 1:
        raise ValueError(f"new_tokens={new_tokens}, batch_size={batch_size}; both must be >= 1")
    runners = build_runners(expert, amateur, params, amateur_dropout=amateur_dropout, device=device)
    _check_prompts(prompts, runners[0].w.vocab_size)
    for i, lo in enumerate(range(0, len(prompts), batch_size)):
        index = list(range(lo, min(lo + batch_size, len(prompts))))
        ids = generate_batch(
            runners,
            [prompts[j] for j in index],
            params,
            new_tokens=new_tokens,
            seed=derive_seed(seed, "batch", i),
            pad_id=pad_id,
            device=device,
        )
        yield index, ids

"""Contrastive decoding, V-head control and sampling math (docs/method.md §5), pure torch.

One decoding step maps the expert's (and amateur's) next-token logits ``[B, V]`` to float32
scores whose softmax is the distribution sampled from:

- ``sample``: ancestral sampling, ``s = log pG`` (``pG = softmax(zG / T)``).
- ``vhead``: ``s = log(pG + eps)`` on the plausible head, ``tail`` elsewhere.
- ``cd``: ``s = log(pG + eps) - lam * log(pB + eps)`` on the head, ``tail`` elsewhere.

The head is ``{x : pG(x) >= alpha * max pG}`` (``>`` with ``strict_head``, the authors' quirk),
computed from the logits: ``pG(x) >= alpha * max pG  <=>  zG(x)/T - max zG/T >= log(alpha)``.

Speed notes (measured on the 2-core CPU this was written on): boolean-mask kernels
(``masked_fill``, ``torch.where``) cost ~20x an arithmetic pass over ``[B, V]``, ``log`` ~10x and ``exp``
of very negative inputs up to 40x, so masks are built arithmetically (``sign``/``clamp``/``minimum``), each
model gets one
softmax, and with ``lam == 1`` the two floored logs are fused into one log of a ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("sample", "vhead", "cd")
_BLOCK = 64  # vocabulary block size of the two-level inverse-CDF sampler
_LOG2E = 1.0 / math.log(2.0)


@dataclass(frozen=True)
class DecodingParams:
    """Decoding keys of a method (docs/method.md §5.4); defaults are the correct behaviour."""

    mode: str
    """``sample`` (plain ancestral), ``vhead`` (expert restricted to its head) or ``cd``."""
    alpha: float = 0.1
    """Plausible-head threshold relative to the expert's max probability, in (0, 1]."""
    strict_head: bool = False
    """Authors' quirk: head is ``pG > alpha * max pG`` (strict); default ``>=``."""
    lam: float = 1.0
    """Weight of the amateur log-probability (Li et al. 2022 form)."""
    temperature: float = 1.0
    """Expert temperature (> 0)."""
    amateur_temperature: float = 1.0
    """Amateur temperature (> 0)."""
    eps: float = 1e-10
    """Floor in ``log(p + eps)`` on both models (authors' value, kept for fidelity); 0 = exact."""
    tail: float = float("-inf")
    """Score outside the head: ``-inf`` (Li et al.) or a finite penalty (authors: -20)."""
    top_k: int | None = None
    """Keep the k best scores (applied after the method score, on the scores); None = off."""
    top_p: float | None = None
    """Keep the smallest best-first set with softmax(scores) mass >= top_p, in (0, 1]; None = off."""

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, "mode", f"one of {', '.join(MODES)}"),
            (0.0 < self.alpha <= 1.0, "alpha", "a number in (0, 1]"),
            (self.lam >= 0.0 and math.isfinite(self.lam), "lam", "a finite number >= 0"),
            (self.temperature > 0.0, "temperature", "a number > 0"),
            (self.amateur_temperature > 0.0, "amateur_temperature", "a number > 0"),
            (0.0 <= self.eps < 1.0, "eps", "a number in [0, 1)"),
            (self.tail == float("-inf") or math.isfinite(self.tail), "tail", "-inf or a finite number"),
            (self.top_k is None or self.top_k >= 1, "top_k", "None or an integer >= 1"),
            (self.top_p is None or 0.0 < self.top_p <= 1.0, "top_p", "None or a number in (0, 1]"),
            (
                not (self.strict_head and self.alpha == 1.0),
                "alpha",
                "a number in (0, 1) with strict_head (alpha=1 and a strict head leave no token)",
            ),
        ]
        for ok, key, allowed in checks:
            if not ok:
                raise ValueError(f"decoding.{key}: got {getattr(self, key)!r}; allowed: {allowed}")

    @property
    def needs_amateur(self) -> bool:
        """True for the modes that contrast the expert with an amateur."""
        return self.mode == "cd"


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float()
    return z / temperature if temperature != 1.0 else z


def _row_max(z: Tensor) -> Tensor:
    return z.amax(dim=-1, keepdim=True)


def _exp_shifted(z: Tensor, z_max: Tensor) -> Tensor:
    """``exp(z - z_max)`` through ``exp2``: this CPU build's ``exp`` takes a slow path for inputs
    below about -87 and for -inf (10-40x), ``exp2`` does not."""
    return (z - z_max).mul_(_LOG2E).exp2_()


def _softmax(z: Tensor, z_max: Tensor) -> Tensor:
    e = _exp_shifted(z, z_max)
    return e.div_(e.sum(dim=-1, keepdim=True))


def _log_softmax(z: Tensor, z_max: Tensor) -> Tensor:
    lse = _exp_shifted(z, z_max).sum(dim=-1, keepdim=True).log_().add_(z_max)
    return z - lse


def outside_head(z: Tensor, z_max: Tensor, alpha: float, strict: bool) -> Tensor:
    """1.0 where a token is outside the plausible head of tempered logits ``z [B, V]``, else 0.0.

    ``z_max`` is ``z``'s row max ``[B, 1]``. Non-strict head: ``z - z_max >= log(alpha)``;
    strict: ``>``. Built with ``sign``/``clamp`` instead of a boolean mask (module docstring).
    """
    sign = (z - (z_max + math.log(alpha))).sign_()
    if strict:  # boundary (equality) is outside
        return sign.clamp_(min=0.0).neg_().add_(1.0)
    return sign.neg_().clamp_(min=0.0)  # boundary is inside


def apply_tail(scores: Tensor, outside: Tensor, tail: float) -> Tensor:
    """``scores`` with every ``outside == 1`` position set to ``tail``; both modified in place.

    ``scores`` must be finite where ``outside == 1`` when ``tail`` is finite (then ``s * 1 + 0``
    and ``s * 0 + tail`` are exact).
    """
    if tail == float("-inf"):
        cap = outside.neg_().add_(0.5).mul_(float("inf"))  # +inf inside, -inf outside
        return torch.minimum(scores, cap, out=scores)
    keep = outside.neg().add_(1.0)
    return scores.mul_(keep).add_(outside.mul_(tail))


def _floored_logprob(z: Tensor, z_max: Tensor, eps: float) -> Tensor:
    """``log(softmax(z) + eps)``, the authors' formula; exact log-softmax when ``eps == 0``."""
    if eps == 0.0:
        return _log_softmax(z, z_max)
    return _softmax(z, z_max).add_(eps).log_()


def _contrast(z_g: Tensor, g_max: Tensor, z_b: Tensor, p: DecodingParams) -> Tensor:
    """``log(pG + eps) - lam * log(pB + eps)`` over the whole vocabulary (finite everywhere)."""
    b_max = _row_max(z_b)
    if p.eps > 0.0 and p.lam == 1.0:  # one log of the ratio instead of two logs
        num = _softmax(z_g, g_max).add_(p.eps)
        return num.div_(_softmax(z_b, b_max).add_(p.eps)).log_()
    lg = _floored_logprob(z_g, g_max, p.eps)
    return lg.sub_(_floored_logprob(z_b, b_max, p.eps), alpha=p.lam)


def method_scores(expert_logits: Tensor, amateur_logits: Tensor | None, p: DecodingParams) -> Tensor:
    """Float32 scores ``[B, V]`` of one decoding step for ``p.mode`` (see the module docstring).

    ``expert_logits``/``amateur_logits`` are raw next-token logits ``[B, V]`` of any float dtype;
    ``amateur_logits`` is only read in ``cd`` mode. Top-k/top-p are not applied here (`truncate`).
    """
    z_g = _tempered(expert_logits, p.temperature)
    g_max = _row_max(z_g)
    if p.mode == "sample":
        return _log_softmax(z_g, g_max)
    if p.mode == "vhead":
        scores = _floored_logprob(z_g, g_max, p.eps)
    else:
        if amateur_logits is None:
            raise ValueError("decoding.mode 'cd' needs amateur logits; got amateur_logits=None")
        scores = _contrast(z_g, g_max, _tempered(amateur_logits, p.amateur_temperature), p)
    return apply_tail(scores, outside_head(z_g, g_max, p.alpha, p.strict_head), p.tail)


def _keep_at_least(scores: Tensor, threshold: Tensor) -> Tensor:
    """Scores with every entry below its row's ``threshold [B, 1]`` set to -inf (ties kept)."""
    cap = torch.sign(scores - threshold).add_(0.5).mul_(float("inf"))  # +inf kept, -inf dropped
    return torch.minimum(scores, cap)


def truncate(scores: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Top-k then top-p truncation of ``scores [B, V]`` (dropped entries become -inf).

    top-k keeps the ``top_k`` highest scores; top-p keeps the smallest best-first set whose
    ``softmax(scores)`` mass reaches ``top_p`` (the best token always stays). Ties at either
    boundary are kept. Returns ``scores`` itself when both are None.
    """
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = _keep_at_least(scores, kth)
    if top_p is not None and top_p < 1.0:
        ordered = torch.sort(scores, dim=-1, descending=True).values
        probs = torch.softmax(ordered, dim=-1)
        mass_before = probs.cumsum(dim=-1).sub_(probs)
        n_keep = (mass_before < top_p).sum(dim=-1, keepdim=True)  # >= 1: mass_before[0] == 0
        scores = _keep_at_least(scores, ordered.gather(-1, n_keep - 1))
    return scores


def _search(cum: Tensor, u: Tensor) -> Tensor:
    """Index ``[B, 1]`` of the first position whose cumulative weight ``cum [B, N]`` exceeds ``u``.

    Falls back to the last position with positive weight when rounding puts ``u`` at the total.
    """
    idx = torch.searchsorted(cum, u, right=True)
    return torch.minimum(idx, torch.searchsorted(cum, cum[:, -1:].contiguous(), right=False))


def sample(scores: Tensor, generator: torch.Generator) -> Tensor:
    """Draw one token per row from ``softmax(scores [B, V])``: int64 ``[B]``, on scores' device.

    Two-level inverse CDF with one float64 uniform per row from ``generator``: pick a block of
    ``_BLOCK`` tokens by its weight, then a token inside it. Cumulative sums run over block sums
    and one block only, in float64, so a tiny weight (a finite ``tail``, e^-20 of the head) is
    never absorbed into a large running float32 sum. No host synchronisation.
    """
    return sample_weights(_exp_shifted(scores, _row_max(scores)), generator)


def sample_weights(weights: Tensor, generator: torch.Generator) -> Tensor:
    """Draw one token per row with probability proportional to ``weights [B, V]`` (>= 0, finite,
    row sums > 0); the two-level inverse CDF of `sample`."""
    b, v = weights.shape
    n_blocks = -(-v // _BLOCK)
    if n_blocks * _BLOCK != v:
        weights = torch.nn.functional.pad(weights, (0, n_blocks * _BLOCK - v))
    blocks = weights.view(b, n_blocks, _BLOCK)
    block_mass = blocks.sum(dim=-1).double()
    block_cum = block_mass.cumsum(dim=-1)
    u = torch.rand(b, 1, dtype=torch.float64, device=weights.device, generator=generator)
    u = u * block_cum[:, -1:]
    block = _search(block_cum, u)  # [B, 1]
    start = block_cum.gather(-1, block) - block_mass.gather(-1, block)
    inner = blocks.gather(1, block[:, :, None].expand(b, 1, _BLOCK)).squeeze(1)
    offset = _search(inner.double().cumsum(dim=-1), (u - start).clamp_(min=0.0))
    return (block * _BLOCK + offset).squeeze(1)


def cd_weights(expert_logits: Tensor, amateur_logits: Tensor, p: DecodingParams) -> Tensor:
    """Unnormalised CD probabilities ``[B, V]``: ``(pG + eps) / (pB + eps)`` on the head (lam 1,
    eps > 0) and ``e^tail`` outside it, i.e. ``exp(method_scores)``: softmax(log r) is r / sum r,
    so sampling needs no log and no exp. Finite: both terms are >= eps."""
    z_g = _tempered(expert_logits, p.temperature)
    g_max = _row_max(z_g)
    z_b = _tempered(amateur_logits, p.amateur_temperature)
    ratio = _softmax(z_g, g_max).add_(p.eps).div_(_softmax(z_b, _row_max(z_b)).add_(p.eps))
    outside = outside_head(z_g, g_max, p.alpha, p.strict_head)
    tail = math.exp(p.tail) if p.tail != float("-inf") else 0.0
    return ratio.mul_(outside.neg().add_(1.0)).add_(outside.mul_(tail))


def next_tokens(
    expert_logits: Tensor, amateur_logits: Tensor | None, p: DecodingParams, generator: torch.Generator
) -> Tensor:
    """One full decoding step: method scores, truncation, one sampled token per row (int64 [B])."""
    if p.mode == "cd" and p.top_k is None and p.top_p is None and p.eps > 0 and p.lam == 1.0:
        return sample_weights(
            cd_weights(expert_logits, amateur_logits, p), generator
        )  # same law, fewer passes
    scores = truncate(method_scores(expert_logits, amateur_logits, p), p.top_k, p.top_p)
    return sample(scores, generator)

"""bf16 weights on the CPU (torch runs bf16 matmuls there): the dtype handling of the GPU paths,
checked where every session can run it. The sampler's runner keeps a bf16 KV cache and returns
float32 logits; decoding upcasts before any softmax; contrastive decoding's distribution stays
close to fp32's; the evaluator's masks are bf16, its log-probs normalised in fp32, its decisions
those of fp32 (GPU-only tests: test_evals.py, test_sampler.py, marked gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdhpc.lm.decoding import DecodingParams, cd_weights, method_scores, next_tokens
from cdhpc.lm.sampler import LlamaRunner, ModelWeights, generate_batch, left_pad

V = 64
GOLDEN = Path(__file__).parent / "golden" / "babylm2025"
PROMPTS = [[1, 5, 6], [1, 20, 21, 22, 2, 1], [1, 9]]  # different lengths: rows 0 and 2 left-padded
CONTS = [[7, 8, 9, 10, 11, 12], [25, 26, 27, 28, 29, 30], [40, 41, 42, 43, 44, 45]]


def tiny_llama(seed: int, sharpen: float = 8.0):
    from transformers import (  # here: collection stays light on workers that skip this
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # peaked distributions, as a trained model's
    return model


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0), tiny_llama(1)


def forced(runner: LlamaRunner) -> torch.Tensor:
    """Next-token logits [B, steps, V] of the prompts' last position and each forced token."""
    ids, n_pad = left_pad(PROMPTS, 3, "cpu")
    steps = len(CONTS[0])
    with torch.inference_mode():
        out = [runner.prefill(ids, n_pad, ids.shape[1] + steps)]
        for t in range(steps - 1):
            out.append(runner.step(torch.tensor([c[t] for c in CONTS])))
    return torch.stack(out, dim=1)


def runners(models, dtype):
    return [LlamaRunner(ModelWeights.from_hf(m, dtype, "cpu")) for m in models]


def test_runner_keeps_a_bf16_cache_and_returns_fp32_logits(models):
    expert, _ = runners(models, torch.bfloat16)
    logits = forced(expert)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()  # padded rows: no NaN
    assert all(k.dtype == torch.bfloat16 for k in expert.k_cache + expert.v_cache)
    assert expert.cos.dtype == torch.bfloat16 and expert.valid.dtype == torch.bool
    ref = forced(runners(models, torch.float32)[0])
    # bf16 keeps 8 bits of mantissa: the logits move by a fraction of their spread, not more
    assert (logits - ref).abs().max() < 0.1 * ref.std()


def test_decoding_upcasts_before_the_softmax(models):
    """Scores from bf16 logits are float32 and equal to those of the same logits upcast first
    (nothing is normalised in bf16)."""
    z_g = forced(runners(models, torch.bfloat16)[0])[:, 0].to(torch.bfloat16)
    z_b = (z_g * 0.5).to(torch.bfloat16)
    for p in (
        DecodingParams(mode="cd"),
        DecodingParams(mode="sample"),
        DecodingParams(mode="vhead"),
        DecodingParams(mode="cd", eps=0.0, lam=0.5, tail=-20.0),
    ):
        got = method_scores(z_g, z_b, p)
        assert got.dtype == torch.float32
        assert torch.equal(got, method_scores(z_g.float(), z_b.float(), p))
    w = cd_weights(z_g, z_b, DecodingParams(mode="cd"))
    assert w.dtype == torch.float32 and torch.equal(
        w, cd_weights(z_g.float(), z_b.float(), DecodingParams(mode="cd"))
    )


def total_variation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a - b).abs().sum(dim=-1)


@pytest.mark.parametrize(
    "params",
    [
        DecodingParams(mode="cd"),
        DecodingParams(mode="cd", alpha=0.01, tail=-20.0),
        DecodingParams(mode="sample"),
    ],
    ids=["cd", "cd-tail", "sample"],
)
def test_cd_distribution_in_bf16_stays_close_to_fp32(models, params):
    """Per step of a forced history, the distribution sampled from (method scores, softmaxed) with
    bf16 weights is within a small total variation of fp32's."""
    dists = {}
    for dtype in (torch.float32, torch.bfloat16):
        expert, amateur = (forced(r) for r in runners(models, dtype))
        dists[dtype] = torch.softmax(
            method_scores(expert.flatten(0, 1), amateur.flatten(0, 1), params), dim=-1
        )
    tv = total_variation(dists[torch.float32], dists[torch.bfloat16])
    assert tv.max() < 0.05, tv
    assert tv.mean() < 0.02, tv.mean()


def test_bf16_generation_runs_and_repeats(models):
    """The lockstep loop end to end in bf16: valid ids, the same ids for the same seed."""
    rs = runners(models, torch.bfloat16)

    def run():
        return generate_batch(
            rs,
            PROMPTS,
            DecodingParams(mode="cd"),
            new_tokens=8,
            seed=3,
            pad_id=3,  # noqa: E731
            device="cpu",
        )

    a = run()
    assert a.shape == (3, 8) and a.dtype == torch.int64 and a.min() >= 0 and a.max() < V
    assert torch.equal(a, run())
    gen = torch.Generator().manual_seed(0)
    z = forced(rs[0])[:, 0]
    assert (
        next_tokens(z.to(torch.bfloat16), z.to(torch.bfloat16), DecodingParams(mode="cd"), gen).dtype
        == torch.int64
    )


def test_evaluator_in_bf16_tracks_fp32():
    """The engine with bf16 weights: a bf16 ancestor mask whose blocked entries are bf16's lowest
    value (no -inf, no NaN rows), log-probs normalised in fp32 and close to fp32's, and nearly
    every BLiMP decision the same."""
    import json

    from cdhpc.evals.batches import ancestor_mask
    from cdhpc.evals.engine import ScoreRequest, score_candidates
    from cdhpc.evals.loading import load_model

    ends = torch.tensor([[3, 2, 3, 4]])
    mask = ancestor_mask(ends, torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.shape == (1, 1, 4, 4)
    assert (mask[0, 0] == 0).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, False, True, False],
        [False, False, False, True],
    ]
    assert mask.min() == torch.finfo(torch.bfloat16).min

    path = GOLDEN / "evaluation_data" / "full_eval" / "blimp_filtered" / "anaphor_gender_agreement.jsonl"
    pairs = [json.loads(line) for line in path.read_text().splitlines()[:60]]
    reqs = [ScoreRequest("", p[k]) for p in pairs for k in ("sentence_good", "sentence_bad")]
    scores = {
        dtype: score_candidates(*load_model(GOLDEN / "model", "cpu", dtype), reqs, batch_size=8)
        for dtype in ("float32", "bfloat16")
    }
    fp32, bf16 = (torch.tensor(scores[d]) for d in ("float32", "bfloat16"))
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert torch.allclose(bf16, fp32, rtol=0.03, atol=0.3), (bf16 - fp32).abs().max()
    same = ((fp32[0::2] >= fp32[1::2]) == (bf16[0::2] >= bf16[1::2])).float().mean()
    assert same >= 0.9, same

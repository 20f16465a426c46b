"""Known-answer tests for the CD / V-head / truncation / sampling math (cdhpc.lm.decoding)."""

import math

import pytest
import torch

from cdhpc.lm.decoding import DecodingParams, method_scores, sample, truncate

INF = float("inf")
# Expert and amateur next-token distributions over a 6-token vocabulary.
P_G = [0.50, 0.25, 0.11, 0.06, 0.04, 0.04]
P_B = [0.60, 1e-12, 0.20, 0.10, 0.05, 0.05 - 1e-12]


def logits(probs, shift=0.0):
    """Logits of ``probs`` up to a constant (the constant must not matter)."""
    return torch.tensor([[math.log(p) + shift for p in probs]], dtype=torch.float32)


def cd_expected(alpha, eps, tail, lam=1.0):
    head = [pg >= alpha * max(P_G) for pg in P_G]
    return [math.log(pg + eps) - lam * math.log(pb + eps) if h else tail for pg, pb, h in zip(P_G, P_B, head)]


def assert_scores(got, want, tol=1e-4):
    got = got[0].tolist()
    for g, w in zip(got, want):
        if math.isinf(w):
            assert g == w, (got, want)
        else:
            assert g == pytest.approx(w, abs=tol), (got, want)


def test_head_boundary_strict_vs_non_strict():
    # token 1 has exactly alpha * max p (0.1 * 1): inside with >=, outside with > (authors).
    z = torch.tensor([[0.0, math.log(0.1), math.log(0.09), math.log(0.5)]])
    loose = method_scores(z, None, DecodingParams("vhead", alpha=0.1, eps=0.0))
    strict = method_scores(z, None, DecodingParams("vhead", alpha=0.1, eps=0.0, strict_head=True))
    assert torch.isfinite(loose[0]).tolist() == [True, True, False, True]
    assert torch.isfinite(strict[0]).tolist() == [True, False, False, True]


def test_cd_scores_without_eps():
    # head (p >= 0.05): tokens 0..3; token 1 has a huge contrast since the amateur gives it 1e-12.
    p = DecodingParams("cd", alpha=0.1, eps=0.0)
    assert_scores(method_scores(logits(P_G, 3.0), logits(P_B, -7.0), p), cd_expected(0.1, 0.0, -INF))
    assert method_scores(logits(P_G), logits(P_B), p)[0, 1].item() == pytest.approx(
        math.log(0.25 / 1e-12), abs=1e-3
    )


def test_cd_scores_with_eps_floor_cap_the_contrast():
    p = DecodingParams("cd", alpha=0.1, eps=1e-10)
    got = method_scores(logits(P_G), logits(P_B), p)
    assert_scores(got, cd_expected(0.1, 1e-10, -INF))
    assert got[0, 1].item() == pytest.approx(math.log(0.25 / 1.01e-10), abs=1e-3)  # not log(0.25/1e-12)


def test_cd_lambda_and_finite_tail():
    p = DecodingParams("cd", alpha=0.1, eps=1e-10, lam=0.5, tail=-20.0)
    assert_scores(method_scores(logits(P_G), logits(P_B), p), cd_expected(0.1, 1e-10, -20.0, lam=0.5))
    p = DecodingParams("cd", alpha=0.1, eps=0.0, tail=-20.0)
    assert_scores(method_scores(logits(P_G), logits(P_B), p), cd_expected(0.1, 0.0, -20.0))


def test_vhead_control_and_plain_sample():
    vhead = method_scores(logits(P_G, 1.5), None, DecodingParams("vhead", alpha=0.2, eps=0.0))
    assert_scores(vhead, [math.log(p) if p >= 0.1 else -INF for p in P_G])
    plain = method_scores(logits(P_G, 1.5), None, DecodingParams("sample"))
    assert_scores(plain, [math.log(p) for p in P_G])


def test_temperatures():
    t_g, t_b = 2.0, 0.5
    p = DecodingParams("cd", alpha=0.3, eps=0.0, temperature=t_g, amateur_temperature=t_b)
    pg = [x ** (1 / t_g) for x in P_G]
    pg = [x / sum(pg) for x in pg]
    pb = [x ** (1 / t_b) for x in P_B]
    pb = [x / sum(pb) for x in pb]
    want = [math.log(g / b) if g >= 0.3 * max(pg) else -INF for g, b in zip(pg, pb)]
    assert_scores(method_scores(logits(P_G), logits(P_B), p), want, tol=2e-3)
    assert sum(math.isfinite(w) for w in want) == 4  # the hotter expert widens the head (T=1: 2)


def test_top_k_and_top_p_act_on_cd_scores():
    scores = method_scores(logits(P_G), logits(P_B), DecodingParams("cd", eps=0.0))
    # CD order: token 1 (log 2.5e11), 0 (log .83), 2 (log .55), 3 (log .6); 4, 5 off the head
    kept = torch.isfinite(truncate(scores.clone(), 2, None))[0].tolist()
    assert kept == [True, True, False, False, False, False]
    s = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    assert torch.isfinite(truncate(s, None, 0.79))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(truncate(s, None, 0.81))[0].tolist() == [True, True, True, False]
    assert torch.isfinite(truncate(s, None, 0.1))[0].tolist() == [True, False, False, False]
    assert torch.isfinite(truncate(s, 3, 0.99))[0].tolist() == [True, True, True, False]


def test_top_k_keeps_ties():
    s = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(truncate(s, 2, None))[0].tolist() == [False, True, True, False]


def authors_formula(z_g, z_b, alpha, eps, tail):
    """The authors' processor, written the obvious way (two softmaxes, probability mask)."""
    p_g, p_b = torch.softmax(z_g.double(), -1), torch.softmax(z_b.double(), -1)
    head = p_g > alpha * p_g.max(-1, keepdim=True).values
    s = torch.log(p_g + eps) - torch.log(p_b + eps)
    return s.masked_fill(~head, tail)


@pytest.mark.parametrize("tail", [-20.0, -INF])
def test_same_distribution_as_authors_formula(tail):
    g = torch.Generator().manual_seed(0)
    z_g, z_b = torch.randn(16, 500, generator=g) * 4, torch.randn(16, 500, generator=g) * 4
    p = DecodingParams("cd", alpha=0.1, strict_head=True, eps=1e-10, tail=tail)
    ours = torch.softmax(method_scores(z_g, z_b, p).double(), -1)
    ref = torch.softmax(authors_formula(z_g, z_b, 0.1, 1e-10, tail), -1)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-9)


def test_sampling_frequencies_match_softmax():
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05, 0.0])
    scores = probs.log().expand(40000, -1).contiguous()
    draws = sample(scores, torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=6).double()
    expected = probs.double() * 40000
    chi2 = (((counts[:5] - expected[:5]) ** 2) / expected[:5]).sum().item()
    assert counts[5] == 0  # -inf is never drawn
    assert chi2 < 18.5  # chi-square, 4 dof: p ~ 0.001


def test_sampling_keeps_tiny_tail_mass():
    # One head token then 65535 tokens at e^-16.7, each below half a float32 ulp of 1.0 (added one
    # by one to a float32 total of 1.0 they vanish); together they hold 3.7e-3 of the mass.
    v, rows, calls = 65536, 256, 12
    scores = torch.full((rows, v), -16.7)
    scores[:, 0] = 0.0
    gen = torch.Generator().manual_seed(3)
    tail_draws = sum(int((sample(scores, gen) > 0).sum()) for _ in range(calls))
    mass = (v - 1) * math.exp(-16.7) / (1 + (v - 1) * math.exp(-16.7))
    assert 0.3 * mass * rows * calls < tail_draws < 2.0 * mass * rows * calls


def test_sample_is_deterministic_and_in_range():
    scores = torch.randn(8, 1000)
    a = sample(scores, torch.Generator().manual_seed(5))
    b = sample(scores, torch.Generator().manual_seed(5))
    assert a.dtype == torch.int64 and a.shape == (8,) and torch.equal(a, b)
    assert int(a.max()) < 1000


@pytest.mark.parametrize(
    "key,value",
    [
        ("mode", "greedy"),
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("eps", -1.0),
        ("tail", INF),
        ("top_k", 0),
        ("top_p", 0.0),
        ("temperature", 0.0),
    ],
)
def test_params_reject_bad_values(key, value):
    kwargs = {"mode": "cd", key: value}
    with pytest.raises(ValueError, match=key):
        DecodingParams(**kwargs)


def test_cd_without_amateur_logits_fails():
    with pytest.raises(ValueError, match="amateur"):
        method_scores(logits(P_G), None, DecodingParams("cd"))


@pytest.mark.parametrize("tail", [float("-inf"), -20.0])
@pytest.mark.parametrize("strict", [False, True])
def test_cd_weights_are_the_softmax_of_the_cd_scores(tail, strict):
    """The sampler's fast path draws from cd_weights: it must be exactly softmax(method_scores)."""
    import torch

    from cdhpc.lm.decoding import DecodingParams, cd_weights, method_scores

    gen = torch.Generator().manual_seed(0)
    zg, zb = torch.randn(8, 50, generator=gen) * 3, torch.randn(8, 50, generator=gen) * 3
    p = DecodingParams(mode="cd", alpha=0.1, strict_head=strict, eps=1e-10, tail=tail)
    w = cd_weights(zg, zb, p).double()
    expected = torch.softmax(method_scores(zg, zb, p).double(), dim=-1)
    assert torch.allclose(w / w.sum(-1, keepdim=True), expected, rtol=1e-5, atol=1e-12)

"""Lockstep sampler (cdhpc.lm.sampler) and shard writing (cdhpc.lm.shards) on tiny random Llamas."""

import math

import pyarrow.parquet as pq
import pytest
import torch

from cdhpc.lm.decoding import DecodingParams, method_scores, truncate
from cdhpc.lm.sampler import LlamaRunner, ModelWeights, generate, left_pad
from cdhpc.lm.shards import parts_dir, split_documents, write_shard

V = 64
SPECIALS = {0, 1, 2, 3}


def tiny_llama(seed, kv_heads=4, sharpen=1.0):
    """A random-init 2-layer Llama; ``sharpen`` scales the LM head so the distributions are
    peaked and the alpha-head is a small part of the vocabulary."""
    from transformers import (  # here: collection stays light on workers that skip this
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


@pytest.fixture(scope="module")
def expert():
    return tiny_llama(0, sharpen=40.0)


@pytest.fixture(scope="module")
def amateur():
    return tiny_llama(1, sharpen=40.0)


SEQS = [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [1, 20, 21, 22, 2, 1, 25, 26, 27, 28, 29, 30, 31, 32]]


def teacher_forced(runner, prompts, conts):
    """Runner logits for the last prompt position and each forced continuation token."""
    ids, n_pad = left_pad(prompts, 3, "cpu")
    steps = len(conts[0])
    with torch.inference_mode():
        out = [runner.prefill(ids, n_pad, ids.shape[1] + steps)]
        for t in range(steps - 1):
            out.append(runner.step(torch.tensor([c[t] for c in conts])))
    return torch.stack(out, dim=1)  # [B, steps, V]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_step_logits_equal_hf_full_forward(kv_heads):
    model = tiny_llama(2, kv_heads=kv_heads)
    prompts = [SEQS[0][:3], SEQS[1][:6]]  # different lengths: row 0 is left-padded
    conts = [SEQS[0][3:9], SEQS[1][6:12]]
    ours = teacher_forced(LlamaRunner(ModelWeights.from_hf(model, torch.float32, "cpu")), prompts, conts)
    for b, (prompt, cont) in enumerate(zip(prompts, conts)):
        with torch.no_grad():
            full = model(torch.tensor([prompt + cont])).logits[0]
        ref = full[len(prompt) - 1 : len(prompt) + len(cont) - 1]
        assert torch.allclose(ours[b], ref, atol=1e-4), (ours[b] - ref).abs().max()


def test_padded_prompt_gives_same_distribution_as_unpadded():
    model = tiny_llama(3)
    runner = LlamaRunner(ModelWeights.from_hf(model, torch.float32, "cpu"))
    short, cont = SEQS[0][:4], SEQS[0][4:12]
    alone = teacher_forced(runner, [short], [cont])[0]
    padded = teacher_forced(runner, [SEQS[1][:9], short], [SEQS[1][9:14] + [5, 6, 7], cont])[1]
    assert torch.allclose(torch.log_softmax(alone, -1), torch.log_softmax(padded, -1), atol=1e-5)


def run(expert, amateur, params, prompts, seed=0, batch_size=4, new_tokens=12, dropout=None):
    return [
        (i, ids)
        for i, ids in generate(
            expert,
            amateur,
            prompts,
            params,
            new_tokens=new_tokens,
            seed=seed,
            batch_size=batch_size,
            amateur_dropout=dropout,
        )
    ]


def test_generate_shapes_order_and_determinism(expert, amateur):
    prompts = [s[: 2 + i % 5] for i, s in enumerate(SEQS * 5)]
    p = DecodingParams("cd")
    a, b = run(expert, amateur, p, prompts, seed=7), run(expert, amateur, p, prompts, seed=7)
    assert [i for i, _ in a] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(ids.shape == (len(i), 12) and ids.dtype == torch.int64 for i, ids in a)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    c = run(expert, amateur, p, prompts, seed=8)
    assert not all(torch.equal(x, y) for (_, x), (_, y) in zip(a, c))


def test_separators_never_stop_generation():
    model = tiny_llama(4)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits 0: uniform over the vocabulary
    prompts = [[1, 5, 6]] * 4
    ((index, ids),) = run(model, None, DecodingParams("sample"), prompts, new_tokens=40)
    assert ids.shape == (4, 40)
    first_sep = [row.index(t) for row in ids.tolist() for t in (1, 2) if t in row]
    assert first_sep and min(first_sep) < 39  # a separator was drawn and generation went on


def test_dropout_amateur_is_reproducible_and_active(expert):
    prompts = [s[:5] for s in SEQS]
    p = DecodingParams("cd")
    a = run(expert, None, p, prompts, seed=3, dropout=0.5)
    b = run(expert, None, p, prompts, seed=3, dropout=0.5)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    w = ModelWeights.from_hf(expert, torch.float32, "cpu")
    ids, n_pad = left_pad(prompts, 3, "cpu")
    clean = LlamaRunner(w).prefill(ids, n_pad, 10)
    gen = torch.Generator().manual_seed(0)
    dropped = LlamaRunner(w, attention_dropout=0.5).prefill(ids, n_pad, 10, gen)
    assert not torch.allclose(clean, dropped, atol=1e-3)


def test_bad_arguments_are_named(expert, amateur):
    with pytest.raises(ValueError, match="exactly one amateur"):
        run(expert, None, DecodingParams("cd"), [[1, 5]])
    with pytest.raises(ValueError, match="uses no amateur"):
        run(expert, amateur, DecodingParams("sample"), [[1, 5]])
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        run(expert, None, DecodingParams("sample"), [[1, 5], []])


def decode(ids):
    return " ".join(f"w{t}" for t in ids)


def shard(expert, amateur, prompts, out, **kw):
    args = dict(
        params=DecodingParams("cd"),
        seed=11,
        continuations=3,
        new_tokens=10,
        batch_size=4,
        chunk_prompts=2,
        special_ids=SPECIALS,
        keep_prompt=False,
        decode=decode,
    )
    args.update(kw)
    return write_shard(expert, amateur, prompts, out, **args)


PROMPTS = [[1, 40 + i, 41 + i, 42 + i][: 2 + i % 3] for i in range(5)]


class Killed(Exception):
    pass


def kill_after_first_chunk(message):
    raise Killed(message)


def test_shard_resume_gives_identical_bytes(expert, amateur, tmp_path):
    full = shard(expert, amateur, PROMPTS, tmp_path / "a.parquet")
    assert full["samples"] == 15 and full["generated_tokens"] == 150 and full["chunks"] == 3
    assert full["chunks_generated"] == 3 and not parts_dir(tmp_path / "a.parquet").exists()
    out = tmp_path / "b.parquet"
    with pytest.raises(Killed):  # killed right after chunk 0 was flushed
        shard(expert, amateur, PROMPTS, out, log=kill_after_first_chunk)
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["part-00000.parquet"] and not out.exists()
    resumed = shard(expert, amateur, PROMPTS, out)
    assert resumed["chunks_generated"] == 2  # the flushed chunk was skipped
    assert out.read_bytes() == (tmp_path / "a.parquet").read_bytes()
    assert resumed["sha256"] == full["sha256"] and not parts_dir(out).exists()
    again = shard(expert, amateur, PROMPTS, out)  # a finished shard is left as it is
    assert again["chunks_generated"] == 0 and again["sha256"] == full["sha256"]


def test_shard_text_has_no_prompt_or_pads(expert, amateur, tmp_path):
    shard(expert, amateur, PROMPTS, tmp_path / "x.parquet")
    rows = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [
        (p, s) for p in range(5) for s in range(3)
    ]
    for r in rows:
        assert r["prompt_ids"] == PROMPTS[r["prompt_index"]]
        assert r["text"] == [decode(d) for d in split_documents(r["input_ids"], SPECIALS)]
        assert all("w3 " not in f"{t} " and "w1 " not in f"{t} " for t in r["text"])
    kept = shard(expert, amateur, PROMPTS, tmp_path / "k.parquet", keep_prompt=True)
    rows_k = pq.read_table(tmp_path / "k.parquet").to_pylist()
    for r in rows_k:
        prompt_text = decode([t for t in r["prompt_ids"] if t not in SPECIALS])
        assert r["text"][0].startswith(prompt_text)
    assert kept["samples"] == 15


def rescore(model, prompt, ids):
    with torch.no_grad():
        return model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : len(prompt) + len(ids) - 1]


@pytest.mark.parametrize("top_k", [None, 3])
def test_cd_shard_tokens_lie_in_expert_head(expert, amateur, tmp_path, top_k):
    alpha = 0.1
    params = DecodingParams("cd", alpha=alpha, top_k=top_k)
    shard(expert, amateur, PROMPTS, tmp_path / "h.parquet", params=params, new_tokens=16)
    head_sizes = []
    for r in pq.read_table(tmp_path / "h.parquet").to_pylist():
        z_g = rescore(expert, r["prompt_ids"], r["input_ids"])
        z_b = rescore(amateur, r["prompt_ids"], r["input_ids"])
        logp = torch.log_softmax(z_g, -1)
        chosen = logp.gather(-1, torch.tensor(r["input_ids"])[:, None])[:, 0]
        assert (chosen >= logp.max(-1).values + math.log(alpha) - 1e-4).all()
        head_sizes += (logp >= logp.max(-1, keepdim=True).values + math.log(alpha)).sum(-1).tolist()
        if top_k:
            kth = torch.topk(truncate(method_scores(z_g, z_b, params), None, None), top_k).values[:, -1]
            cd = method_scores(z_g, z_b, params).gather(-1, torch.tensor(r["input_ids"])[:, None])[:, 0]
            assert (cd >= kth - 1e-4).all()
    assert sum(head_sizes) / len(head_sizes) < V / 4  # the head is a real restriction here

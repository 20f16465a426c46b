"""Documents, tokenizer, token arrays and real/synthetic mixing (cdhpc.lm.data). Fast, CPU only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cdhpc.lm import data
from cdhpc.lm.data import MixedBatches, TokenArray

WORDS = "the cat dog sat on mat a big small red ran over under happy tree house".split()


def _write_corpus(path: Path, n_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(rng.randint(1, 3))
        ]
        docs.append("\n".join(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = _write_corpus(root / "train" / "a.txt", 200, 0) + _write_corpus(root / "train" / "b.txt", 100, 1)
    info = data.train_tokenizer(root / "train", root / "tok", vocab_size=100)
    return root, docs, info


def test_read_documents_blank_line_and_line(tmp_path):
    (tmp_path / "b.txt").write_text("x y\n\n\n\nlast\n")
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n   \nfour")
    assert list(data.read_documents(tmp_path)) == ["one\ntwo", "three", "four", "x y", "last"]
    assert list(data.read_documents(tmp_path / "a.txt", "line")) == ["one", "two", "three", "four"]
    with pytest.raises(ValueError, match="doc_sep='para'"):
        list(data.read_documents(tmp_path, "para"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.txt"):
        list(data.read_documents(tmp_path / "sub"))
    with pytest.raises(FileNotFoundError, match="no such corpus file"):
        list(data.read_documents(tmp_path / "nope.txt"))


def test_tokenizer_specials_and_bos_encoding(corpus):
    from transformers import AutoTokenizer

    root, docs, info = corpus
    tok = AutoTokenizer.from_pretrained(root / "tok")
    assert [tok.convert_tokens_to_ids(t) for t in data.SPECIALS] == [0, 1, 2, 3]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    ids = tok("the cat sat on the mat").input_ids
    assert ids[0] == 1 and 2 not in ids and len(ids) > 1
    assert tok.decode(ids, skip_special_tokens=True) == "the cat sat on the mat"
    assert info["vocab_size"] == 100 and len(tok) == 100


def test_tokenizer_training_is_deterministic(corpus, tmp_path):
    root, _, info = corpus
    again = data.train_tokenizer(root / "train", tmp_path / "tok", vocab_size=100)
    assert again["tokenizer_sha256"] == info["tokenizer_sha256"]


def test_encode_split_matches_tokenizer_and_boundaries(corpus, tmp_path):
    from transformers import AutoTokenizer

    root, docs, info = corpus
    meta = data.encode_split(root / "tok", root / "train", tmp_path / "arr")
    arr = TokenArray.open(tmp_path / "arr")
    assert meta["dtype"] == "<u2" and arr.tokens.dtype == np.uint16
    assert meta["n_docs"] == arr.n_docs == len(docs) and meta["n_tokens"] == len(arr)
    assert arr.offsets[0] == 0 and arr.offsets[-1] == len(arr) and np.all(np.diff(arr.offsets) > 2)
    assert meta["tokenizer_sha256"] == info["tokenizer_sha256"]
    assert sorted(Path(p).name for p in meta["inputs_sha256"]) == ["a.txt", "b.txt"]
    tok = AutoTokenizer.from_pretrained(root / "tok")
    for i in (0, 57, len(docs) - 1):  # training encoding = <s> text </s> = tokenizer(text) + </s>
        assert arr.document(i).tolist() == tok(docs[i]).input_ids + [data.EOS_ID]
    assert int((arr.tokens[:] == data.BOS_ID).sum()) == len(docs)
    assert not list(tmp_path.glob(".*tmp*"))


def test_token_array_uint32_and_atomic_replace(tmp_path):
    docs = [np.array([1, 70000, 2]), np.array([1, 5, 6, 2])]
    meta = data.write_token_array(tmp_path / "big", docs, vocab_size=70001, meta={"kind": "test"})
    arr = TokenArray.open(tmp_path / "big")
    assert meta["dtype"] == "<u4" and meta["kind"] == "test"
    assert arr.offsets.tolist() == [0, 3, 7] and arr.document(0).tolist() == [1, 70000, 2]
    assert (tmp_path / "big" / "tokens.bin").stat().st_size == 7 * 4

    def failing():
        yield np.array([1, 9, 2])
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        data.write_token_array(tmp_path / "big", failing(), vocab_size=70001, meta={})
    assert TokenArray.open(tmp_path / "big").document(1).tolist() == [1, 5, 6, 2]  # old one intact
    assert [p.name for p in tmp_path.iterdir()] == ["big"]  # temp dir cleaned up
    with pytest.raises(ValueError, match="token id 99 >= vocab_size 50"):
        data.write_token_array(tmp_path / "bad", [np.array([99])], vocab_size=50, meta={})


def _arrays(tmp_path: Path) -> tuple[TokenArray, TokenArray]:
    """Real tokens are 0..49, synthetic 50..99, so every row says where it came from."""
    rng = np.random.default_rng(0)
    data.write_token_array(tmp_path / "real", [rng.integers(0, 50, 4000)], 100, {})
    data.write_token_array(tmp_path / "syn", [rng.integers(50, 100, 3000)], 100, {})
    return TokenArray.open(tmp_path / "real"), TokenArray.open(tmp_path / "syn")


@pytest.mark.parametrize("share,global_batch", [(0.3, 256), (0.1, 10), (0.37, 48), (2 / 3, 16)])
def test_exact_share_within_one_sequence_over_any_window(share, global_batch):
    mix = MixedBatches(
        TokenArray(np.zeros(10, np.uint16), np.array([0, 10]), {}),
        TokenArray(np.zeros(10, np.uint16), np.array([0, 10]), {}),
        global_batch=global_batch,
        seq_len=4,
        seed=0,
        share=share,
    )
    counts = np.array([mix.n_synthetic(t) for t in range(60)])
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    for a in range(60):
        for b in range(a + 1, 61):
            assert abs(cumulative[b] - cumulative[a] - share * global_batch * (b - a)) < 1
    if share == 0.1:
        assert counts.tolist() == [1] * 60  # exact rational arithmetic: 0.1 * 10 is one, always


def test_mixed_rows_come_from_the_right_array(tmp_path):
    real, syn = _arrays(tmp_path)
    mix = MixedBatches(real, syn, global_batch=32, seq_len=15, seed=3, share=0.3, micro_batch=4)
    tokens, mask = mix.global_batch_at(7)
    assert tokens.shape == (32, 16) and tokens.dtype == np.int64
    assert mask.sum() == mix.n_synthetic(7) and np.all((tokens >= 50) == mask[:, None])
    assert 0 < mask[:16].sum() < mask.sum() or 0 < mask[16:].sum() < mask.sum()  # shuffled
    again, _ = mix.global_batch_at(7)
    assert np.array_equal(tokens, again) and not np.array_equal(tokens, mix.global_batch_at(8)[0])
    assert abs(mix.realised_share(100) - 0.3) <= 1 / (100 * 32)


def test_share_zero_and_one(tmp_path):
    real, syn = _arrays(tmp_path)
    none = MixedBatches(real, None, global_batch=8, seq_len=7, seed=0)
    assert all(none.n_synthetic(t) == 0 for t in range(20)) and none.global_batch_at(0)[0].max() < 50
    only = MixedBatches(real, syn, global_batch=8, seq_len=7, seed=0, share=1.0)
    tokens, mask = only.global_batch_at(5)
    assert mask.all() and tokens.min() >= 50 and only.realised_share(20) == 1.0
    with pytest.raises(ValueError, match="no synthetic token array"):
        MixedBatches(real, None, global_batch=8, seq_len=7, seed=0, share=0.5)


def test_per_device_rounding_reproduces_the_quirk(tmp_path):
    real, syn = _arrays(tmp_path)
    mix = MixedBatches(
        real, syn, global_batch=64, seq_len=7, seed=1, share=0.3, micro_batch=16, rounding="per_device"
    )
    _, mask = mix.global_batch_at(0)
    assert mask.reshape(4, 16).sum(axis=1).tolist() == [4, 4, 4, 4]  # int(16 * 0.3) per device
    assert mix.realised_share(10) == 0.25
    with pytest.raises(ValueError, match="rounding='nearest'"):
        MixedBatches(real, syn, global_batch=64, seq_len=7, seed=1, rounding="nearest")


def test_rank_slices_partition_the_global_batch(tmp_path):
    real, syn = _arrays(tmp_path)
    mix = MixedBatches(real, syn, global_batch=24, seq_len=7, seed=2, share=0.5, micro_batch=4)
    full, _ = mix.global_batch_at(3)
    world = 3
    per_rank = [mix.micro_batches(3, r, world) for r in range(world)]
    assert all(len(batches) == 2 for batches in per_rank)  # 24 / (4 x 3) accumulation steps
    rebuilt = np.concatenate([per_rank[r][a] for a in range(2) for r in range(world)])
    assert np.array_equal(rebuilt, full)
    with pytest.raises(ValueError, match="micro_batch x world_size = 4 x 5"):
        mix.micro_batches(0, 0, 5)


def test_windows_uniform_and_fixed(tmp_path):
    real, _ = _arrays(tmp_path)
    starts = real.sample_starts(np.random.default_rng(0), 20000, 101)
    assert starts.min() >= 0 and starts.max() <= len(real) - 101
    assert abs(starts.mean() - (len(real) - 101) / 2) < 40  # uniform over the stream
    fixed = real.fixed_starts(5, 101)
    assert fixed.tolist() == [0, 975, 1950, 2924, 3899] and np.array_equal(fixed, real.fixed_starts(5, 101))
    assert np.array_equal(real.windows(fixed[:1], 3)[0], np.asarray(real.tokens[:3]))
    with pytest.raises(ValueError, match="fewer than one window of 5000"):
        real.fixed_starts(2, 5000)
    assert json.loads((tmp_path / "real" / "meta.json").read_text())["n_tokens"] == 4000

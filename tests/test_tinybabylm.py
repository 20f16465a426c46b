"""The TinyBabyLM builder on a small fake BabyLM 2024 / TinyStories layout (real file names, made here)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from cdhpc.corpora.tinybabylm import (
    BABYLM_SOURCES,
    SOURCES,
    SPLITS,
    build_tinybabylm,
    cap_by_words,
    cap_words,
    chunk_document,
    count_words,
    iter_blank_line_documents,
    iter_stories,
    seed_indices,
    split_sentences,
    tinystories_paths,
)
from cdhpc.lm.data import read_documents

VOCAB = "the a cat dog sun café naïve ran saw big small red tree house went home".split()
N_DOCS = {"gutenberg": 60, "simple_wiki": 101, "open_subtitles": 40}


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(VOCAB) for _ in range(n_words)]
    return " ".join([words[0].capitalize(), *words[1:]]) + rng.choice(".!?")


def _doc(rng: random.Random, n_sentences: int, lines: int = 1) -> str:
    sentences = [_sentence(rng, rng.randint(3, 30)) for _ in range(n_sentences)]
    per_line = math.ceil(n_sentences / lines)
    return "\n".join(" ".join(sentences[i : i + per_line]) for i in range(0, n_sentences, per_line))


def _fake_inputs(root: Path, n_stories: int = 300) -> tuple[Path, Path, dict[str, list[str]]]:
    """BabyLM 2024 text_data + TinyStoriesV2 in their release layouts; returns the docs written."""
    rng = random.Random(7)
    babylm, written = root / "babylm", {}
    for split, ext in (("train_100M", "train"), ("test", "test")):
        (babylm / split).mkdir(parents=True)
        for source, n in N_DOCS.items():
            # gutenberg has long multi-line documents (chunked in seed/), the others short ones.
            docs = [
                _doc(
                    rng,
                    rng.randint(8, 25) if source == "gutenberg" else rng.randint(1, 3),
                    lines=3 if source == "gutenberg" else 1,
                )
                for _ in range(n if ext == "train" else 7)
            ]
            written[f"{source}.{ext}"] = docs
            # Irregular separators: several empty lines, whitespace-only lines, no final newline.
            text = "\n \n\n".join(docs) if source == "simple_wiki" else "\n\n".join(docs) + "\n"
            (babylm / split / f"{source}.{ext}").write_text(text, encoding="utf-8")
    stories_dir = root / "TinyStories"
    stories_dir.mkdir()
    for part, n in (("train", n_stories), ("valid", 9)):
        stories = [_doc(rng, rng.randint(2, 12), lines=2) for _ in range(n)]
        written[f"tinystories.{part}"] = stories
        # As in the release: stories separated by a line <|endoftext|>, blank lines between paragraphs.
        body = "\n<|endoftext|>\n".join(s.replace("\n", "\n\n") for s in stories) + "\n<|endoftext|>\n"
        (stories_dir / f"TinyStoriesV2-GPT4-{part}.txt").write_text(body, encoding="utf-8")
    return babylm, stories_dir, written


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybabylm")
    babylm, stories, written = _fake_inputs(root)
    cap = sum(cap_words(s) for s in written["tinystories.train"]) // 2
    counts = build_tinybabylm(babylm, stories, root / "corpus", tinystories_words=cap)
    return root, babylm, stories, written, cap, counts


def _read(path: Path) -> list[str]:
    return list(read_documents(path))


def test_layout_and_file_format(built):
    root, *_, counts = built
    for split in SPLITS:
        for source in SOURCES:
            path = root / "corpus" / split / f"{source}.txt"
            raw = path.read_bytes().decode("utf-8")
            assert raw.endswith("\n") and not raw.endswith("\n\n") and not raw.startswith("\n")
            assert "\n\n\n" not in raw  # exactly one empty line between documents
            docs = raw[:-1].split("\n\n")
            assert all(line.strip() for doc in docs for line in doc.split("\n"))
            assert docs == _read(path)
            assert counts["corpus"][split][source] == {
                "docs": len(docs),
                "words": sum(map(count_words, docs)),
            }
    assert sorted(p.name for p in root.iterdir()) == ["TinyStories", "babylm", "corpus"]  # no temp dirs left


def test_babylm_train_seed_split_is_95_5_and_loses_nothing(built):
    root, _, _, written, _, counts = built
    for source, n in N_DOCS.items():
        train = _read(root / "corpus" / "train" / f"{source}.txt")
        seed = _read(root / "corpus" / "seed" / f"{source}.txt")
        docs = written[f"{source}.train"]
        assert len(train) == n - math.ceil(0.05 * n)
        assert set(train) < set(docs) and [d for d in docs if d in set(train)] == train  # input order kept
        held_out = [d for d in docs if d not in set(train)]
        assert len(held_out) == math.ceil(0.05 * n)
        # Chunks concatenate back to the held-out documents (only whitespace at the cuts changes).
        assert " ".join(seed).split() == " ".join(held_out).split()
        assert counts["corpus"]["seed"][source]["words"] == sum(map(count_words, held_out))
    assert counts["corpus"]["seed"]["gutenberg"]["docs"] > math.ceil(
        0.05 * N_DOCS["gutenberg"]
    )  # long docs cut


def test_seed_chunks_are_cut_at_sentence_ends_within_bounds(built):
    root, *_ = built
    chunks = _read(root / "corpus" / "seed" / "gutenberg.txt")
    assert all(count_words(c) <= 200 for c in chunks)
    assert all(c[-1] in ".!?" for c in chunks)
    assert sum(count_words(c) >= 100 for c in chunks) >= len(chunks) // 2


def test_tinystories_word_cap_and_split(built):
    root, _, _, written, cap, counts = built
    stories = written["tinystories.train"]
    sel = counts["tinystories"]
    keep = cap_by_words([cap_words(s) for s in stories], cap, 42)
    kept = [s for s, k in zip(stories, keep) if k]
    assert sel == {
        "stories": len(stories),
        "stories_kept": len(kept),
        "words_kept": sum(map(cap_words, kept)),
        "words_cap": cap,
    }
    assert cap - max(map(cap_words, stories)) < sel["words_kept"] <= cap
    train = _read(root / "corpus" / "train" / "tinystories.txt")
    assert len(train) == len(kept) - math.ceil(0.05 * len(kept)) and set(train) < set(kept)
    seed_words = counts["corpus"]["seed"]["tinystories"]["words"]
    assert seed_words + sum(map(count_words, train)) == sum(map(count_words, kept))


def test_test_split_is_babylm_test_plus_tinystories_validation(built):
    root, _, _, written, _, counts = built
    for source in BABYLM_SOURCES:
        assert _read(root / "corpus" / "test" / f"{source}.txt") == written[f"{source}.test"]
    assert _read(root / "corpus" / "test" / "tinystories.txt") == written["tinystories.valid"]
    assert counts["corpus"]["test"]["tinystories"]["docs"] == 9


def test_deterministic_bytes_and_seed_matters(built, tmp_path):
    root, babylm, stories, _, cap, counts = built
    again = build_tinybabylm(
        babylm, stories / "TinyStoriesV2-GPT4-train.txt", tmp_path / "a", tinystories_words=cap
    )
    build_tinybabylm(babylm, stories, tmp_path / "b", tinystories_words=cap, split_seed=1)
    assert again == counts
    files = sorted(p.relative_to(root / "corpus") for p in (root / "corpus").rglob("*.txt"))
    assert len(files) == 12
    assert all((root / "corpus" / f).read_bytes() == (tmp_path / "a" / f).read_bytes() for f in files)
    for f in ("train/gutenberg.txt", "train/tinystories.txt"):
        assert (tmp_path / "b" / f).read_bytes() != (root / "corpus" / f).read_bytes()


def test_missing_babylm_files_are_listed(tmp_path):
    babylm, stories, _ = _fake_inputs(tmp_path, n_stories=20)
    (babylm / "test" / "gutenberg.test").unlink()
    (babylm / "train_100M" / "open_subtitles.train").unlink()
    with pytest.raises(FileNotFoundError) as e:
        build_tinybabylm(babylm, stories, tmp_path / "out")
    assert str(babylm / "test" / "gutenberg.test") in str(e.value)
    assert str(babylm / "train_100M" / "open_subtitles.train") in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_tinystories_files_name_what_is_expected(tmp_path):
    empty = tmp_path / "ts"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="TinyStoriesV2-GPT4-train.txt.*TinyStories-valid.txt"):
        tinystories_paths(empty)
    (empty / "TinyStories-train.txt").write_text("A story.\n<|endoftext|>\n")
    with pytest.raises(FileNotFoundError, match="TinyStories-valid.txt"):
        tinystories_paths(empty / "TinyStories-train.txt")
    with pytest.raises(FileNotFoundError, match="-train"):
        tinystories_paths(tmp_path / "stories.txt")
    (empty / "TinyStories-valid.txt").write_text("A story.\n")
    assert tinystories_paths(empty) == (empty / "TinyStories-train.txt", empty / "TinyStories-valid.txt")
    for name in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"):
        (empty / name).write_text("A story.\n")
    with pytest.raises(ValueError, match="both"):
        tinystories_paths(empty)


def test_failed_build_leaves_no_output(tmp_path):
    babylm, stories, _ = _fake_inputs(tmp_path, n_stories=20)
    (stories / "TinyStoriesV2-GPT4-valid.txt").write_text("<|endoftext|>\n\n")
    with pytest.raises(ValueError, match="TinyStoriesV2-GPT4-valid.txt: no documents"):
        build_tinybabylm(babylm, stories, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TinyStories", "babylm"]


# ------------------------------------------------------------------------------ pure helpers --
def test_chunk_document_known_answer():
    doc = "A b c. D e!\nF g h i? J k l m n. O."  # sentences of 3, 2, 4, 5 and 1 words
    assert split_sentences(doc) == ["A b c. ", "D e!\n", "F g h i? ", "J k l m n. ", "O."]
    assert chunk_document(doc, 4, 6) == ["A b c. D e!", "F g h i?", "J k l m n. O."]
    assert chunk_document(doc, 5, 9) == ["A b c. D e!", "F g h i? J k l m n.", "O."]  # closed at exactly 5
    assert chunk_document(doc, 4, 5) == ["A b c. D e!", "F g h i?", "J k l m n.", "O."]
    assert chunk_document(doc, 16, 20) == [doc]  # shorter than the lower bound: whole
    assert chunk_document("x " * 9 + "x.", 3, 4) == [
        "x x x x",
        "x x x x",
        "x x.",
    ]  # no sentence end: cut at words


def test_chunk_bounds_on_random_documents():
    rng = random.Random(3)
    for _ in range(50):
        doc = _doc(rng, rng.randint(1, 40), lines=rng.randint(1, 4))
        chunks = chunk_document(doc, 100, 200)
        assert " ".join(chunks).split() == doc.split()
        if count_words(doc) < 100:
            assert chunks == [doc]
        assert all(count_words(c) <= 200 and c[-1] in ".!?" for c in chunks)
        assert all(
            count_words(c) >= 100 for c in chunks[:-1]
        )  # sentences <= 30 words: only the tail is short


def test_seed_indices_and_cap_known_answers():
    assert len(seed_indices(100, 0.05, 42)) == 5 and len(seed_indices(101, 0.05, 42)) == 6
    assert len(seed_indices(2, 0.9, 0)) == 1 and seed_indices(1, 0.05, 0) == frozenset()
    assert seed_indices(1000, 0.05, 42) == seed_indices(1000, 0.05, 42) != seed_indices(1000, 0.05, 43)
    order = list(range(3))
    random.Random(0).shuffle(order)
    expected = bytearray(3)
    for i in order[:2]:
        expected[i] = 1
    assert cap_by_words([3, 3, 3], 7, 0) == expected  # two stories fit, the third would exceed 7
    counts = [1, 1, 1]
    counts[order[0]] = 10  # the first story in shuffled order does not fit: nothing after it is taken
    assert cap_by_words(counts, 5, 0) == bytearray(3)


def test_document_readers():
    assert list(iter_blank_line_documents(["a\n", "b \n", " \n", "\n", "c"])) == ["a\nb ", "c"]
    lines = ["Once.\n", "\n", "  Then.  \n", "<|endoftext|>\n", "Two.<|endoftext|>Three.\n"]
    assert list(iter_stories(lines)) == ["Once.\nThen.", "Two.", "Three."]
    assert cap_words("a b\nc  d") == 4 and count_words("a b\nc  d") == 4


@pytest.mark.slow
def test_prepare_stage_builds_tinybabylm_through_the_launcher(tmp_path):
    """data.kind tinybabylm: the prepare step builds the splits, the tokenizer step reads them."""
    import json
    import subprocess
    import sys

    babylm, tinystories, _ = _fake_inputs(tmp_path / "in")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""\
name: tb
workdir: {tmp_path / "work"}
data: {{kind: tinybabylm, babylm_dir: {babylm}, tinystories: {tinystories}, tinystories_words: 5000}}
tokenizer: {{vocab_size: 300}}
pretrain: {{model: tiny, steps: 10, checkpoint_every: 10}}
methods: {{baseline: {{}}}}
eval: {{tasks: [perplexity]}}
""")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", str(sweep), "--until", "tokenizer"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    receipt = json.loads(next((tmp_path / "work/receipts/prepare").glob("*.json")).read_text())
    counts = receipt["metrics"]["counts"]["corpus"]
    assert set(counts) == {"train", "seed", "test"} and "tinystories" in counts["train"]
    assert counts["train"]["tinystories"]["words"] <= 5000
    tok = json.loads(next((tmp_path / "work/receipts/tokenizer").glob("*.json")).read_text())
    assert tok["status"] == "ok" and tok["metrics"]["arrays"]["train"]["n_tokens"] > 0

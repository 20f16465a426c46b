"""The TinyBabyLM corpus of docs/method.md §2, built from local copies of BabyLM 2024 and TinyStories.

Inputs (the public releases' own file names):
- ``babylm_dir/train_100M/{gutenberg,simple_wiki,open_subtitles}.train`` and
  ``babylm_dir/test/{...}.test`` (BabyLM 2024 ``text_data``); a document is a group of non-empty
  lines ended by an empty (whitespace-only) line.
- TinyStories: a directory holding ``TinyStoriesV2-GPT4-{train,valid}.txt`` or
  ``TinyStories-{train,valid}.txt``, or the train file itself (validation = ``-valid`` beside it).
  Stories are separated by a line ``<|endoftext|>``; lines are stripped, empty lines dropped.

Output: ``out/{train,seed,test}/<source>.txt`` (sources gutenberg, simple_wiki, open_subtitles,
tinystories), documents separated by exactly one empty line, UTF-8, ending with "\\n". Each source is
split train/seed (``seed_fraction`` of its documents, seeded); seed documents of >= chunk_words[0]
words are cut at sentence ends into chunks of ~chunk_words[0]..chunk_words[1] words (generation
prompts). Test = the BabyLM 2024 test files + TinyStories validation. TinyStories is capped at
``tinystories_words`` words after a seeded shuffle, words counted as the authors did (split on ' ').

Every file is streamed twice (count, then route), so memory holds per-document integers, never a
corpus; documents keep their input order. Same inputs and arguments -> byte-identical files.
"""

from __future__ import annotations

import math
import random
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

BABYLM_SOURCES = ("gutenberg", "simple_wiki", "open_subtitles")
TINYSTORIES = "tinystories"
SOURCES = (*BABYLM_SOURCES, TINYSTORIES)
SPLITS = ("train", "seed", "test")
END_OF_TEXT = "<|endoftext|>"
TINYSTORIES_FILES = (
    ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"),
    ("TinyStories-train.txt", "TinyStories-valid.txt"),
)
# A sentence ends at . ! ? or an ellipsis, optionally followed by closing quotes/brackets, then
# whitespace; a line end is always a cut point too (documents never cut inside a word).
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+|\n")
_WORD = re.compile(r"\S+\s*")

Log = Callable[[str], None]


# ------------------------------------------------------------------------------ pure helpers --
def count_words(text: str) -> int:
    """Whitespace-separated words: the unit of chunk sizes and of the returned counts."""
    return len(text.split())


def cap_words(text: str) -> int:
    """Words as the authors counted them for the TinyStories cap: ``len(text.split(' '))``."""
    return len(text.split(" "))


def iter_blank_line_documents(lines: Iterable[str]) -> Iterator[str]:
    """Documents of a BabyLM file: consecutive non-empty lines (newline removed, text otherwise kept)
    joined with "\\n"; one or more whitespace-only lines end a document."""
    doc: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line.strip():
            doc.append(line)
        elif doc:
            yield "\n".join(doc)
            doc = []
    if doc:
        yield "\n".join(doc)


def iter_stories(lines: Iterable[str]) -> Iterator[str]:
    """Stories of a TinyStories text file: text between ``<|endoftext|>`` markers (normally a line
    of its own), lines stripped, empty lines dropped, joined with "\\n"."""
    story: list[str] = []
    for raw in lines:
        for i, part in enumerate(raw.split(END_OF_TEXT)):
            if i > 0 and story:  # a marker came before this part: the story so far is complete
                yield "\n".join(story)
                story = []
            if part.strip():
                story.append(part.strip())
    if story:
        yield "\n".join(story)


def seed_indices(n_docs: int, fraction: float, seed: int) -> frozenset[int]:
    """Indices of the documents held out as the seed split: ceil(n_docs * fraction) of them (as
    scikit-learn's train_test_split rounds a float test size) but never all, drawn with
    ``random.Random(seed)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"seed_fraction={fraction!r}: allowed values are 0 < seed_fraction < 1")
    k = min(max(n_docs - 1, 0), math.ceil(n_docs * fraction))
    return frozenset(random.Random(seed).sample(range(n_docs), k))


def cap_by_words(word_counts: Iterable[int], max_words: int, seed: int) -> bytearray:
    """Which documents to keep (mask, 1 = kept): shuffle the indices with ``random.Random(seed)`` and
    keep that order's longest prefix whose words sum to at most `max_words`."""
    counts = array("q", word_counts)
    order = list(range(len(counts)))
    random.Random(seed).shuffle(order)
    keep, total = bytearray(len(counts)), 0
    for i in order:
        if total + counts[i] > max_words:
            break
        keep[i], total = 1, total + counts[i]
    return keep


def split_sentences(text: str) -> list[str]:
    """Cut `text` after every sentence end and line end; the pieces concatenate back to `text`."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _units(text: str, max_words: int) -> list[tuple[str, int]]:
    """Sentences with their word counts; a sentence longer than `max_words` (no sentence end in
    sight) is cut at word boundaries into pieces of `max_words`."""
    units = []
    for sentence in split_sentences(text):
        n = count_words(sentence)
        if n <= max_words:
            units.append((sentence, n))
            continue
        words = _WORD.findall(sentence)  # leading whitespace is dropped: chunks are stripped anyway
        for i in range(0, n, max_words):
            piece = words[i : i + max_words]
            units.append(("".join(piece), len(piece)))
    return units


def check_chunk_words(chunk_words: tuple[int, int]) -> None:
    """Raise ValueError unless chunk_words is (low, high) with 0 < low <= high (words)."""
    low, high = chunk_words
    if not 0 < low <= high:
        raise ValueError(f"chunk_words=({low}, {high}): allowed (low, high) with 0 < low <= high")


def chunk_document(text: str, min_words: int, max_words: int) -> list[str]:
    """Cut a document of >= `min_words` words at sentence ends into chunks of `min_words` to
    `max_words` words (a shorter document is returned whole).

    Greedy: sentences are added until the chunk reaches `min_words`; a chunk is closed early (short)
    only when the next sentence would push it over `max_words`; a short tail joins the previous chunk
    when both fit in `max_words`. Every chunk has at most `max_words` words."""
    check_chunk_words((min_words, max_words))
    if count_words(text) < min_words:
        return [text]
    chunks: list[tuple[str, int]] = []
    cur, cur_words = "", 0
    for unit, n in _units(text, max_words):
        if cur_words and cur_words + n > max_words:
            chunks.append((cur, cur_words))
            cur, cur_words = "", 0
        cur, cur_words = cur + unit, cur_words + n
        if cur_words >= min_words:
            chunks.append((cur, cur_words))
            cur, cur_words = "", 0
    if cur_words:
        if chunks and chunks[-1][1] + cur_words <= max_words:
            chunks[-1] = (chunks[-1][0] + cur, chunks[-1][1] + cur_words)
        else:
            chunks.append((cur, cur_words))
    return [c.strip() for c, _ in chunks]


# ---------------------------------------------------------------------------------- inputs --
def babylm_paths(babylm_dir: str | Path) -> dict[str, dict[str, Path]]:
    """The BabyLM 2024 files used, as {"train"|"test": {source: path}}. Raises FileNotFoundError
    listing every expected file that is missing."""
    root = Path(babylm_dir)
    paths = {
        "train": {s: root / "train_100M" / f"{s}.train" for s in BABYLM_SOURCES},
        "test": {s: root / "test" / f"{s}.test" for s in BABYLM_SOURCES},
    }
    missing = [str(p) for split in paths.values() for p in split.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.babylm_dir={root}: missing BabyLM 2024 text files: {', '.join(missing)}. "
            "Expected the text_data release layout: train_100M/<source>.train and "
            "test/<source>.test for gutenberg, simple_wiki, open_subtitles"
        )
    return paths


def tinystories_paths(tinystories: str | Path) -> tuple[Path, Path]:
    """(train, validation) TinyStories text files for a directory or a train file path. Raises
    FileNotFoundError naming the expected files, ValueError when a directory holds both versions."""
    path = Path(tinystories)
    if path.is_dir():
        pairs = [(path / t, path / v) for t, v in TINYSTORIES_FILES]
        found = [(t, v) for t, v in pairs if t.is_file() and v.is_file()]
        if len(found) > 1:
            raise ValueError(
                f"data.tinystories={path}: holds both {found[0][0].name} and {found[1][0].name}; "
                "set data.tinystories to the train file you mean"
            )
        if found:
            return found[0]
        expected = " or ".join(f"{t} + {v}" for t, v in pairs)
        raise FileNotFoundError(
            f"data.tinystories={path}: no TinyStories train + validation pair; expected {expected}"
        )
    if "-train" not in path.name:
        raise FileNotFoundError(
            f"data.tinystories={path}: not a directory and not a '*-train*.txt' file; expected a "
            f"directory with {' or '.join(t for t, _ in TINYSTORIES_FILES)} (+ -valid), "
            "or the train file itself"
        )
    valid = path.with_name(path.name.replace("-train", "-valid", 1))
    missing = [str(p) for p in (path, valid) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.tinystories={path}: missing {', '.join(missing)} (train file and its "
            "-valid file beside it)"
        )
    return path, valid


def _read_lines(path: Path) -> Iterator[str]:
    """Stream a UTF-8 text file line by line; a decoding error names the file."""
    with open(path, encoding="utf-8") as handle:
        try:
            yield from handle
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 ({e}); convert it, e.g. iconv -t UTF-8") from None


# ---------------------------------------------------------------------------------- output --
class _DocWriter:
    """Appends documents to one corpus file (one empty line between documents, final "\\n") and
    counts documents and words."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w", encoding="utf-8", newline="\n")
        self.docs = self.words = 0

    def write(self, doc: str) -> None:
        self.handle.write(("\n" if self.docs else "") + doc + "\n")
        self.docs += 1
        self.words += count_words(doc)

    def close(self) -> dict[str, int]:
        self.handle.close()
        return {"docs": self.docs, "words": self.words}


def _route(
    docs: Iterable[str],
    keep: bytearray | None,
    held_out: frozenset[int],
    tmp: Path,
    source: str,
    chunk_words: tuple[int, int],
) -> dict[str, dict[str, int]]:
    """Write the kept documents (all when `keep` is None) to train/ or, when their rank among the
    kept ones is in `held_out`, chunked to seed/."""
    train, seed = _DocWriter(tmp / "train" / f"{source}.txt"), _DocWriter(tmp / "seed" / f"{source}.txt")
    rank = 0
    try:
        for i, doc in enumerate(docs):
            if keep is not None and not keep[i]:
                continue
            if rank in held_out:
                for chunk in chunk_document(doc, *chunk_words):
                    seed.write(chunk)
            else:
                train.write(doc)
            rank += 1
    finally:
        counts = {"train": train.close(), "seed": seed.close()}
    return counts


def _copy_docs(src: Path, read: Callable[[Iterable[str]], Iterator[str]], dest: Path) -> dict[str, int]:
    """Copy every document of `src` (as `read` parses its lines) to `dest`, normalised."""
    writer = _DocWriter(dest)
    try:
        for doc in read(_read_lines(src)):
            writer.write(doc)
    finally:
        counts = writer.close()
    if not counts["docs"]:
        raise ValueError(
            f"{src}: no documents (expected text, documents separated by empty lines or {END_OF_TEXT})"
        )
    return counts


def _babylm_source(
    path: Path, tmp: Path, source: str, fraction: float, split_seed: int, chunk_words: tuple[int, int]
) -> dict[str, dict[str, int]]:
    n_docs = sum(1 for _ in iter_blank_line_documents(_read_lines(path)))
    if n_docs < 2:
        raise ValueError(
            f"{path}: {n_docs} document(s); a train/seed split needs documents separated by empty lines"
        )
    held_out = seed_indices(n_docs, fraction, split_seed)
    return _route(iter_blank_line_documents(_read_lines(path)), None, held_out, tmp, source, chunk_words)


def _tinystories_source(
    path: Path, tmp: Path, max_words: int, fraction: float, split_seed: int, chunk_words: tuple[int, int]
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    lengths = array("q", (cap_words(s) for s in iter_stories(_read_lines(path))))
    keep = cap_by_words(lengths, max_words, split_seed)
    n_kept = sum(keep)
    if n_kept < 2:
        raise ValueError(
            f"{path}: {n_kept} stories within data.tinystories_words={max_words}; need at least 2"
        )
    held_out = seed_indices(n_kept, fraction, split_seed)
    counts = _route(iter_stories(_read_lines(path)), keep, held_out, tmp, TINYSTORIES, chunk_words)
    kept_words = sum(n for n, k in zip(lengths, keep) if k)
    return counts, {
        "stories": len(lengths),
        "stories_kept": n_kept,
        "words_kept": kept_words,
        "words_cap": max_words,
    }


def build_tinybabylm(
    babylm_dir: Path,
    tinystories: Path,
    out: Path,
    *,
    tinystories_words: int = 38_000_000,
    seed_fraction: float = 0.05,
    split_seed: int = 42,
    chunk_words: tuple[int, int] = (100, 200),
    log: Log | None = None,
) -> dict:
    """Write the TinyBabyLM corpus to ``out/{train,seed,test}/<source>.txt`` atomically (a temp dir
    beside `out`, renamed into place at the end) and return its counts:
    ``{"corpus": {split: {source: {"docs": n, "words": n}}}, "tinystories": {"stories": n,
    "stories_kept": n, "words_kept": n, "words_cap": n}}`` (words: whitespace-separated, except the
    TinyStories selection, counted with split(' ') as the cap). All inputs are checked first."""
    from cdhpc.base.atomicio import atomic_dir

    log = log or (lambda message: None)
    if tinystories_words < 1:
        raise ValueError(f"tinystories_words={tinystories_words!r}: allowed an integer >= 1")
    check_chunk_words(chunk_words)
    babylm = babylm_paths(babylm_dir)
    ts_train, ts_valid = tinystories_paths(tinystories)
    corpus: dict[str, dict[str, dict[str, int]]] = {split: {} for split in SPLITS}
    with atomic_dir(out) as tmp:
        for source in BABYLM_SOURCES:
            log(f"tinybabylm: {source}: splitting {babylm['train'][source]}")
            _merge(
                corpus,
                source,
                _babylm_source(babylm["train"][source], tmp, source, seed_fraction, split_seed, chunk_words),
            )
            corpus["test"][source] = _copy_docs(
                babylm["test"][source], iter_blank_line_documents, tmp / "test" / f"{source}.txt"
            )
        log(f"tinybabylm: {TINYSTORIES}: selecting up to {tinystories_words} words of {ts_train}")
        counts, selection = _tinystories_source(
            ts_train, tmp, tinystories_words, seed_fraction, split_seed, chunk_words
        )
        _merge(corpus, TINYSTORIES, counts)
        corpus["test"][TINYSTORIES] = _copy_docs(ts_valid, iter_stories, tmp / "test" / f"{TINYSTORIES}.txt")
    for split in SPLITS:
        log(
            f"tinybabylm: {split}: "
            + ", ".join(f"{s} {c['docs']} docs {c['words']} words" for s, c in corpus[split].items())
        )
    return {"corpus": corpus, "tinystories": selection}


def _merge(corpus: dict, source: str, counts: dict[str, dict[str, int]]) -> None:
    for split, c in counts.items():
        corpus[split][source] = c

"""Corpus documents, the tokenizer, memory-mapped token arrays and real/synthetic batch mixing.

Prepared corpus layout: ``CORPUS/<split>/<source>.txt`` (split in train/seed/test). A document is a
group of non-empty lines ended by an empty line (``doc_sep="blank_line"``) or a single line
(``doc_sep="line"``). Documents are read with plain Python line streaming rather than
``datasets.load_dataset("text", sample_by="paragraph")``: the datasets loader first copies every
file into an Arrow cache (extra disk writes outside the work directory, slower on first use), and
a generator over lines is all the tokenizer trainer and the encoder need.

A token array directory holds ``tokens.bin`` (raw little-endian uint16, or uint32 when the vocabulary
exceeds 65,535), ``docs.npy`` (int64 document offsets, ``n_docs + 1`` values) and ``meta.json``.
Every document is stored as ``<s> ids </s>``. torch is never imported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from cdhpc.base.atomicio import atomic_dir, sha256_file  # noqa: F401 (sha256_file is part of this API)

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPECIAL_IDS = frozenset((UNK_ID, BOS_ID, EOS_ID, PAD_ID))  # in-stream document separators, never in text
DOC_SEPS = ("blank_line", "line")
ROUNDINGS = ("exact", "per_device")
_ENCODE_CHUNK_DOCS = 4096


def _text_files(path_or_dir: Path) -> list[Path]:
    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.txt files (expected CORPUS/<split>/<source>.txt)")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus file or directory")
    return [path]


def read_documents(path_or_dir: str | Path, doc_sep: str = "blank_line") -> Iterator[str]:
    """Yield the documents of a ``.txt`` file or of every ``*.txt`` in a directory (sorted by name).

    ``blank_line``: consecutive non-empty lines joined with ``\\n`` form one document; one or more
    empty (whitespace-only) lines end it. ``line``: every non-empty line is a document.
    """
    if doc_sep not in DOC_SEPS:
        raise ValueError(f"doc_sep={doc_sep!r}: allowed values are {', '.join(DOC_SEPS)}")
    for file in _text_files(Path(path_or_dir)):
        with open(file, encoding="utf-8") as handle:
            lines: list[str] = []
            for raw in handle:
                line = raw.rstrip("\r\n")
                if not line.strip():
                    if lines:
                        yield "\n".join(lines)
                        lines = []
                elif doc_sep == "line":
                    yield line
                else:
                    lines.append(line)
            if lines:
                yield "\n".join(lines)


def train_tokenizer(
    train_dir: Path,
    out_dir: Path,
    *,
    vocab_size: int,
    min_frequency: int = 2,
    doc_sep: str = "blank_line",
    seed: int = 42,
) -> dict:
    """Train the SentencePiece-style BPE tokenizer (NFKC, specials ``<unk> <s> </s> <pad>`` = 0-3)
    on the documents under ``train_dir`` and save it as a HF tokenizer directory in ``out_dir``.

    The saved tokenizer prepends ``<s>`` (as LLaMA's does): ``tok(text).input_ids == [1] + ids``;
    token arrays store ``<s> ids </s>``. BPE training has no random choices, so two runs give a
    byte-identical ``tokenizer.json``; ``seed`` is only recorded in the result. Written atomically.
    Returns ``{"vocab_size", "tokenizer_sha256", "files": {name: sha256}, "seed"}``.
    """
    from tokenizers import SentencePieceBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from cdhpc.base.thirdparty import bpe_tokenizer

    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size={vocab_size}: must exceed the {len(SPECIALS)} special tokens")
    bpe = SentencePieceBPETokenizer(unk_token="<unk>")
    bpe.train_from_iterator(
        read_documents(train_dir, doc_sep),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIALS),
        show_progress=False,
    )
    core = bpe_tokenizer(bpe)  # the tokenizers.Tokenizer inside the implementation wrapper
    assert [core.token_to_id(t) for t in SPECIALS] == [UNK_ID, BOS_ID, EOS_ID, PAD_ID]
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        hf.save_pretrained(str(tmp))
    files = {p.name: sha256_file(p) for p in sorted(out_dir.iterdir()) if p.is_file()}
    return {
        "vocab_size": core.get_vocab_size(),
        "seed": seed,
        "files": files,
        "tokenizer_sha256": files.get("tokenizer.json"),
    }


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab <= 65,535), else uint32."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def _wrap_docs(id_lists: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents as ``<s> ids </s>``; return (tokens, per-document lengths)."""
    lengths = np.fromiter((len(ids) + 2 for ids in id_lists), dtype=np.int64, count=len(id_lists))
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=dtype)
    starts = ends - lengths
    flat[starts] = BOS_ID
    flat[ends - 1] = EOS_ID
    for start, ids in zip(starts.tolist(), id_lists):
        flat[start + 1 : start + 1 + len(ids)] = ids
    return flat, lengths


class _ArrayWriter:
    """Streams documents into ``tmp/tokens.bin`` and collects offsets; ``finish`` writes the rest."""

    def __init__(self, tmp: Path, vocab_size: int):
        self.tmp, self.vocab_size, self.dtype = tmp, vocab_size, token_dtype(vocab_size)
        self.handle = open(tmp / "tokens.bin", "wb")
        self.lengths: list[np.ndarray] = []

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        if flat.size and int(flat.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(flat.max())} >= vocab_size {self.vocab_size}")
        self.handle.write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self.lengths.append(lengths)

    def finish(self, meta: dict) -> dict:
        self.handle.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(self.tmp / "docs.npy", offsets)
        full = {
            **meta,
            "dtype": self.dtype.str,
            "n_tokens": int(offsets[-1]),
            "n_docs": int(len(lengths)),
            "vocab_size": self.vocab_size,
        }
        (self.tmp / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True))
        return full


def write_token_array(out: Path, docs: Iterable[np.ndarray], vocab_size: int, meta: dict) -> dict:
    """Write already-tokenised documents (each a full ``<s> ... </s>`` id array, or any ids the
    caller wants stored verbatim) as a token array directory, atomically. Returns the meta."""
    with atomic_dir(Path(out)) as tmp:
        writer = _ArrayWriter(tmp, vocab_size)
        try:
            for doc in docs:
                doc = np.asarray(doc)
                writer.add(doc, np.array([doc.size], dtype=np.int64))
        finally:
            writer.handle.close()
        return writer.finish(meta)


def _chunks(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_split(tokenizer_dir: Path, src: Path, out: Path, *, doc_sep: str = "blank_line") -> dict:
    """Tokenise every document of ``src`` (a ``.txt`` file or a split directory) as ``<s> ids </s>``
    into the token array directory ``out`` (written in a temp directory, renamed at the end).
    Batch-encodes through the fast tokenizer's Rust ``encode_batch``; memory stays bounded by one
    chunk of documents. Returns the meta (dtype, n_tokens, n_docs, vocab_size, sha256 of inputs)."""
    from tokenizers import Tokenizer

    tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"{tokenizer_json}: missing (tokenizer_dir must come from train_tokenizer)")
    core = Tokenizer.from_file(str(tokenizer_json))
    inputs = {str(p): sha256_file(p) for p in _text_files(Path(src))}
    with atomic_dir(Path(out)) as tmp:
        writer = _ArrayWriter(tmp, core.get_vocab_size())
        try:
            for chunk in _chunks(read_documents(src, doc_sep), _ENCODE_CHUNK_DOCS):
                encodings = core.encode_batch(chunk, add_special_tokens=False)
                writer.add(*_wrap_docs([e.ids for e in encodings], writer.dtype))
        finally:
            writer.handle.close()
        return writer.finish(
            {"doc_sep": doc_sep, "inputs_sha256": inputs, "tokenizer_sha256": sha256_file(tokenizer_json)}
        )


class TokenArray:
    """Read-only memory-mapped view of a token array directory."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, meta: dict):
        self.tokens, self.offsets, self.meta = tokens, offsets, meta

    @classmethod
    def open(cls, directory: str | Path) -> TokenArray:
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: missing (not a token array directory)")
        meta = json.loads(meta_path.read_text())
        tokens = (
            np.memmap(
                directory / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],)
            )
            if meta["n_tokens"]
            else np.zeros(0, meta["dtype"])
        )
        offsets = np.load(directory / "docs.npy", mmap_mode="r")
        return cls(tokens, offsets, meta)

    def __len__(self) -> int:
        """Number of tokens."""
        return int(self.tokens.shape[0])

    @property
    def n_docs(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (including its ``<s>``/``</s>``)."""
        return np.asarray(self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])])

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int64 array ``[len(starts), length]`` of the tokens at ``starts[i] : starts[i] + length``."""
        if len(self) < length:
            raise ValueError(f"token array has {len(self)} tokens, fewer than one window of {length}")
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length, dtype=np.int64)
        return np.asarray(self.tokens[index], dtype=np.int64)

    def sample_starts(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """``n`` window starts drawn uniformly over the concatenated stream."""
        if len(self) < length:
            raise ValueError(f"token array has {len(self)} tokens, fewer than one window of {length}")
        return rng.integers(0, len(self) - length + 1, size=n, dtype=np.int64)

    def fixed_starts(self, n: int, length: int) -> np.ndarray:
        """``n`` evenly spaced, deterministic window starts (for validation)."""
        if len(self) < length:
            raise ValueError(f"token array has {len(self)} tokens, fewer than one window of {length}")
        return np.linspace(0, len(self) - length, num=n).round().astype(np.int64)


class MixedBatches:
    """Global batches of ``global_batch`` windows of ``seq_len + 1`` tokens, a share ``share`` of
    them drawn from the synthetic array, deterministic from ``(seed, step)`` alone.

    ``rounding="exact"``: batch ``t`` holds ``floor((t+1)qG) - floor(tqG)`` synthetic rows (exact
    rational arithmetic), so any window of batches is within one row of share ``q``; positions are
    shuffled within the batch. ``rounding="per_device"`` reproduces the authors' quirk: every
    micro-batch holds ``int(micro_batch * q)`` synthetic rows (q=0.3, micro 16 -> 25%).
    Row layout of a global batch: micro-batch ``a`` of rank ``r`` is rows
    ``[(a*W + r)*m, (a*W + r + 1)*m)`` for ``W`` ranks and micro-batch ``m``.
    """

    def __init__(
        self,
        real: TokenArray,
        synthetic: TokenArray | None = None,
        *,
        global_batch: int,
        seq_len: int,
        seed: int,
        share: float = 0.0,
        micro_batch: int | None = None,
        rounding: str = "exact",
    ):
        if rounding not in ROUNDINGS:
            raise ValueError(f"mix rounding={rounding!r}: allowed values are {', '.join(ROUNDINGS)}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"synthetic_share={share}: must be within [0, 1]")
        if share > 0 and synthetic is None:
            raise ValueError(f"synthetic_share={share} > 0 but no synthetic token array was given")
        micro = micro_batch or global_batch
        if global_batch % micro:
            raise ValueError(f"global_batch={global_batch} is not a multiple of micro_batch={micro}")
        self.real, self.synthetic, self.seed = real, synthetic, seed
        self.global_batch, self.seq_len, self.micro_batch = global_batch, seq_len, micro
        self.share, self.rounding = Fraction(share).limit_denominator(10**6), rounding

    def n_synthetic(self, step: int) -> int:
        """Synthetic rows in global batch ``step`` (0-based)."""
        if self.rounding == "per_device":
            return int(self.micro_batch * self.share) * (self.global_batch // self.micro_batch)
        per_batch = self.share * self.global_batch
        return int((step + 1) * per_batch) - int(step * per_batch)  # Fractions: exact floors

    def realised_share(self, steps: int, start: int = 0) -> float:
        """Synthetic fraction of the rows of batches ``start .. start + steps - 1``."""
        total = sum(self.n_synthetic(t) for t in range(start, start + steps))
        return total / (steps * self.global_batch) if steps else 0.0

    def _draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(is_synthetic mask [G], window starts [G]) for global batch ``step``."""
        rng = np.random.default_rng([self.seed, step])
        g, length = self.global_batch, self.seq_len + 1
        mask = np.zeros(g, dtype=bool)
        if self.rounding == "per_device":
            k = int(self.micro_batch * self.share)
            for begin in range(0, g, self.micro_batch):
                mask[begin + rng.permutation(self.micro_batch)[:k]] = True
        else:
            mask[rng.permutation(g)[: self.n_synthetic(step)]] = True
        starts = self.real.sample_starts(rng, g, length)
        if self.synthetic is not None and mask.any():
            starts = np.where(mask, self.synthetic.sample_starts(rng, g, length), starts)
        return mask, starts

    def _rows(self, mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
        out = np.empty((len(starts), self.seq_len + 1), dtype=np.int64)
        if (~mask).any():
            out[~mask] = self.real.windows(starts[~mask], self.seq_len + 1)
        if mask.any():
            out[mask] = self.synthetic.windows(starts[mask], self.seq_len + 1)
        return out

    def global_batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 tokens ``[G, seq_len + 1]``, bool is_synthetic ``[G]``) of batch ``step``."""
        mask, starts = self._draw(step)
        return self._rows(mask, starts), mask

    def micro_batches(self, step: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
        """This rank's micro-batches of global batch ``step``, in accumulation order; only these
        rows are read from disk."""
        per_round = self.micro_batch * world_size
        if self.global_batch % per_round:
            raise ValueError(
                f"global_batch={self.global_batch} is not a multiple of micro_batch "
                f"x world_size = {self.micro_batch} x {world_size}"
            )
        mask, starts = self._draw(step)
        m = self.micro_batch
        rows = [
            slice((a * world_size + rank) * m, (a * world_size + rank + 1) * m)
            for a in range(self.global_batch // per_round)
        ]
        return [self._rows(mask[s], starts[s]) for s in rows]

"""One shard = one Parquet file of synthetic samples, written resumably in chunks.

The shard's samples are ``(prompt_index, sample_index)`` for every prompt and every
``sample_index < continuations``. Chunk ``c`` (``chunk_prompts`` consecutive prompts) is generated
with a seed derived from ``(seed, c)`` only and written atomically as
``<out.stem>.parts/part-<c:05d>.parquet``; a re-run skips the parts already there, so a killed
shard resumes and its final bytes equal an uninterrupted run's. At the end the parts are
concatenated into ``out`` (atomically) and the parts folder is removed.

Columns: ``prompt_index`` (int64), ``sample_index`` (int32), ``text`` (list<string>: the
continuation split into documents at the special tokens, empty documents dropped; the prompt
text starts the first document only with ``keep_prompt``), ``input_ids`` (list<int32>, the
generated ids) and ``prompt_ids`` (list<int32>). Pads never reach ``text``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdhpc.receipts import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported only when generating
    from cdhpc.decoding import DecodingParams

SCHEMA = pa.schema([
    ("prompt_index", pa.int64()),
    ("sample_index", pa.int32()),
    ("text", pa.list_(pa.string())),
    ("input_ids", pa.list_(pa.int32())),
    ("prompt_ids", pa.list_(pa.int32())),
])
# Fixed writer options: the same rows always give the same bytes (Parquet stores no timestamp).
_PARQUET = {"compression": "zstd", "compression_level": 3, "use_dictionary": False,
            "write_statistics": True, "version": "2.6", "data_page_version": "1.0",
            "row_group_size": 1 << 20}


def split_documents(ids: list[int], special_ids: set[int]) -> list[list[int]]:
    """The runs of non-special ids between special ids (``<s>``, ``</s>``, pads), empty runs dropped."""
    docs, current = [], []
    for token in ids:
        if token in special_ids:
            if current:
                docs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        docs.append(current)
    return docs


def sample_texts(prompt: list[int], generated: list[int], special_ids: set[int],
                 keep_prompt: bool, decode: Callable[[list[int]], str]) -> list[str]:
    """Decoded documents of one sample; whitespace-only documents are dropped."""
    ids = list(prompt) + list(generated) if keep_prompt else list(generated)
    texts = [decode(doc) for doc in split_documents(ids, special_ids)]
    return [t for t in texts if t.strip()]


def parts_dir(out: Path) -> Path:
    """Where the chunks of shard ``out`` live until they are concatenated."""
    return out.parent / f"{out.stem}.parts"


def part_path(out: Path, chunk: int) -> Path:
    return parts_dir(out) / f"part-{chunk:05d}.parquet"


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as Parquet to ``path`` atomically (fixed writer options: same rows, same bytes)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), buffer, **_PARQUET)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


def _chunk_table(expert: Any, amateur: Any, prompts: list[list[int]], lo: int, hi: int,
                 opts: dict[str, Any]) -> pa.Table:
    """Generate the samples of prompts ``lo:hi`` (seed from ``(seed, chunk)``) as a table."""
    from cdhpc.plan import derive_seed
    from cdhpc.sampler import generate

    n = opts["continuations"]
    pairs = [(pi, si) for pi in range(lo, hi) for si in range(n)]
    generated: list[list[int]] = [[] for _ in pairs]
    for index, ids in generate(expert, amateur, [prompts[pi] for pi, _ in pairs], opts["params"],
                               new_tokens=opts["new_tokens"], batch_size=opts["batch_size"],
                               seed=derive_seed(opts["seed"], "chunk", lo // opts["chunk_prompts"]),
                               amateur_dropout=opts["amateur_dropout"], device=opts["device"]):
        for row, seq in zip(index, ids.tolist()):
            generated[row] = seq
    texts = [sample_texts(prompts[pi], gen, opts["special_ids"], opts["keep_prompt"], opts["decode"])
             for (pi, _), gen in zip(pairs, generated)]
    columns = {"prompt_index": [pi for pi, _ in pairs], "sample_index": [si for _, si in pairs],
               "text": texts, "input_ids": generated,
               "prompt_ids": [list(prompts[pi]) for pi, _ in pairs]}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def shard_stats(out: Path) -> dict[str, Any]:
    """Counts, size and sha256 of a finished shard file."""
    table = pq.read_table(out, columns=["text", "input_ids"])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"samples": table.num_rows,
            "generated_tokens": int(pc.sum(pc.list_value_length(table["input_ids"])).as_py() or 0),
            "text_documents": int(pc.sum(pc.list_value_length(table["text"])).as_py() or 0),
            "bytes": out.stat().st_size, "sha256": digest}


def write_shard(expert: Any, amateur: Any, prompts: list[list[int]], out: Path, *,
                params: DecodingParams, seed: int, continuations: int, new_tokens: int,
                batch_size: int, chunk_prompts: int, special_ids: set[int], keep_prompt: bool,
                decode: Callable[[list[int]], str], amateur_dropout: float | None = None,
                device: str = "cpu", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate (or finish) shard ``out`` (see the module docstring); returns its stats.

    Stats: samples, generated_tokens, text_documents, bytes, sha256 (of the final file), chunks,
    chunks_generated (by this call), generate_s and tokens_per_s (this call's generation).
    """
    if continuations < 1 or chunk_prompts < 1:
        raise ValueError(f"continuations={continuations}, chunk_prompts={chunk_prompts}; both must be >= 1")
    out = Path(out)
    n_chunks = -(-len(prompts) // chunk_prompts)
    opts = {"params": params, "seed": seed, "continuations": continuations, "new_tokens": new_tokens,
            "batch_size": batch_size, "chunk_prompts": chunk_prompts, "special_ids": set(special_ids),
            "keep_prompt": keep_prompt, "decode": decode, "amateur_dropout": amateur_dropout,
            "device": device}
    done, tokens, seconds = 0, 0, 0.0
    if not out.exists():
        parts_dir(out).mkdir(parents=True, exist_ok=True)
        for c in range(n_chunks):
            if part_path(out, c).exists():
                continue
            start = time.perf_counter()
            lo, hi = c * chunk_prompts, min((c + 1) * chunk_prompts, len(prompts))
            write_table_atomic(_chunk_table(expert, amateur, prompts, lo, hi, opts), part_path(out, c))
            seconds += time.perf_counter() - start
            done, tokens = done + 1, tokens + (hi - lo) * continuations * new_tokens
            if log:
                log(f"{out.name}: chunk {c + 1}/{n_chunks} written ({(hi - lo) * continuations} samples)")
        tables = [pq.read_table(part_path(out, c), schema=SCHEMA) for c in range(n_chunks)]
        write_table_atomic(pa.concat_tables(tables) if tables else SCHEMA.empty_table(), out)
        shutil.rmtree(parts_dir(out))
    stats = shard_stats(out)
    stats.update({"chunks": n_chunks, "chunks_generated": done, "generate_s": round(seconds, 3),
                  "tokens_per_s": round(tokens / seconds, 1) if seconds else None})
    return stats

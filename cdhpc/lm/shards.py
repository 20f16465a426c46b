"""One shard = one Parquet file of synthetic samples, written resumably in chunks.

The shard's samples are ``(prompt_index, sample_index)`` for every prompt and every
``sample_index < continuations``. Chunk ``c`` (``chunk_prompts`` consecutive prompts) is generated
with a seed derived from ``(seed, c)`` only and written atomically as
``<out.stem>.parts/part-<c:05d>.parquet``, its sha256 then recorded in ``<out.stem>.progress.json``
with the shard's layout (everything that shapes a part's bytes but not the step key: chunk size,
batch size, device kind). A re-run skips the parts whose bytes still match their recorded sha256
under the same layout and regenerates the others, so a killed shard resumes and its final bytes
equal an uninterrupted run's. At the end the parts are concatenated into ``out`` (atomically),
its sha256 is recorded and the parts folder is removed. A finished ``out`` is trusted only while it
matches that record: a truncated or foreign file is deleted and the shard generated again.

Columns: ``prompt_index`` (int64), ``sample_index`` (int32), ``text`` (list<string>: the
continuation split into documents at the special tokens, empty documents dropped; the prompt
text starts the first document only with ``keep_prompt``), ``input_ids`` (list<int32>, the
generated ids) and ``prompt_ids`` (list<int32>). Pads never reach ``text``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdhpc.base.atomicio import atomic_write_bytes, atomic_write_json, sha256_file

if TYPE_CHECKING:  # torch is imported only when generating
    from cdhpc.lm.decoding import DecodingParams

SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),
        ("sample_index", pa.int32()),
        ("text", pa.list_(pa.string())),
        ("input_ids", pa.list_(pa.int32())),
        ("prompt_ids", pa.list_(pa.int32())),
    ]
)
# Fixed writer options: the same rows always give the same bytes (Parquet stores no timestamp).
_PARQUET = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "row_group_size": 1 << 20,
}


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


def sample_texts(
    prompt: list[int],
    generated: list[int],
    special_ids: set[int],
    keep_prompt: bool,
    decode: Callable[[list[int]], str],
) -> list[str]:
    """Decoded documents of one sample; whitespace-only documents are dropped."""
    ids = list(prompt) + list(generated) if keep_prompt else list(generated)
    texts = [decode(doc) for doc in split_documents(ids, special_ids)]
    return [t for t in texts if t.strip()]


def parts_dir(out: Path) -> Path:
    """Where the chunks of shard ``out`` live until they are concatenated."""
    return out.parent / f"{out.stem}.parts"


def part_path(out: Path, chunk: int) -> Path:
    return parts_dir(out) / f"part-{chunk:05d}.parquet"


def progress_path(out: Path) -> Path:
    """The record of shard ``out``'s layout, flushed parts and final file (sha256 and bytes)."""
    return out.parent / f"{out.stem}.progress.json"


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet with the fixed writer options: the same rows always give the same bytes."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), buffer, **_PARQUET)
    return buffer.getvalue().to_pybytes()


def write_table_atomic(table: pa.Table, path: Path) -> dict[str, Any]:
    """Write ``table`` as Parquet to ``path`` atomically; returns the sha256 and bytes written."""
    data = parquet_bytes(table)
    atomic_write_bytes(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def matches(path: Path, recorded: dict[str, Any] | None) -> bool:
    """``path`` holds exactly the bytes ``recorded`` (sha256 and size) describes."""
    return (
        recorded is not None
        and path.is_file()
        and path.stat().st_size == recorded["bytes"]
        and sha256_file(path) == recorded["sha256"]
    )


def shard_layout(prompts: list[list[int]], opts: dict[str, Any]) -> str:
    """A hash of what shapes the parts' bytes, the step key aside: prompts, seed, sizes, chunking
    and batching (options, outside the key) and the device kind (CUDA samples in bfloat16)."""
    described = {k: v for k, v in opts.items() if k not in ("decode", "device", "special_ids", "params")}
    described |= {
        "prompts": [[int(t) for t in p] for p in prompts],
        "special_ids": sorted(opts["special_ids"]),
        "params": repr(opts["params"]),
        "device": str(opts["device"]).split(":")[0],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def read_progress(out: Path, layout: str) -> dict[str, Any]:
    """The progress record of shard ``out`` if it was written under ``layout``; else an empty one."""
    try:
        progress = json.loads(progress_path(out).read_text())
    except (OSError, ValueError):
        progress = {}
    if progress.get("layout") != layout:
        progress = {}
    return {"layout": layout, "parts": progress.get("parts", {}), "shard": progress.get("shard")}


def _chunk_table(
    expert: Any, amateur: Any, prompts: list[list[int]], lo: int, hi: int, opts: dict[str, Any]
) -> pa.Table:
    """Generate the samples of prompts ``lo:hi`` (seed from ``(seed, chunk)``) as a table."""
    from cdhpc.base.keys import derive_seed
    from cdhpc.lm.sampler import generate

    n = opts["continuations"]
    pairs = [(pi, si) for pi in range(lo, hi) for si in range(n)]
    generated: list[list[int]] = [[] for _ in pairs]
    for index, ids in generate(
        expert,
        amateur,
        [prompts[pi] for pi, _ in pairs],
        opts["params"],
        new_tokens=opts["new_tokens"],
        batch_size=opts["batch_size"],
        seed=derive_seed(opts["seed"], "chunk", lo // opts["chunk_prompts"]),
        amateur_dropout=opts["amateur_dropout"],
        device=opts["device"],
    ):
        for row, seq in zip(index, ids.tolist()):
            generated[row] = seq
    texts = [
        sample_texts(prompts[pi], gen, opts["special_ids"], opts["keep_prompt"], opts["decode"])
        for (pi, _), gen in zip(pairs, generated)
    ]
    columns = {
        "prompt_index": [pi for pi, _ in pairs],
        "sample_index": [si for _, si in pairs],
        "text": texts,
        "input_ids": generated,
        "prompt_ids": [list(prompts[pi]) for pi, _ in pairs],
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def shard_stats(out: Path) -> dict[str, Any]:
    """Counts, size and sha256 of a finished shard file."""
    table = pq.read_table(out, columns=["text", "input_ids"])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {
        "samples": table.num_rows,
        "generated_tokens": int(pc.sum(pc.list_value_length(table["input_ids"])).as_py() or 0),
        "text_documents": int(pc.sum(pc.list_value_length(table["text"])).as_py() or 0),
        "bytes": out.stat().st_size,
        "sha256": digest,
    }


def write_shard(
    expert: Any,
    amateur: Any,
    prompts: list[list[int]],
    out: Path,
    *,
    params: DecodingParams,
    seed: int,
    continuations: int,
    new_tokens: int,
    batch_size: int,
    chunk_prompts: int,
    special_ids: set[int],
    keep_prompt: bool,
    decode: Callable[[list[int]], str],
    amateur_dropout: float | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate (or finish) shard ``out`` (see the module docstring); returns its stats.

    Stats: samples, generated_tokens, text_documents, bytes, sha256 (of the final file), chunks,
    chunks_generated (by this call), generate_s and tokens_per_s (this call's generation).
    """
    if continuations < 1 or chunk_prompts < 1:
        raise ValueError(f"continuations={continuations}, chunk_prompts={chunk_prompts}; both must be >= 1")
    out = Path(out)
    n_chunks = -(-len(prompts) // chunk_prompts)
    opts = {
        "params": params,
        "seed": seed,
        "continuations": continuations,
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "chunk_prompts": chunk_prompts,
        "special_ids": set(special_ids),
        "keep_prompt": keep_prompt,
        "decode": decode,
        "amateur_dropout": amateur_dropout,
        "device": device,
    }
    progress = read_progress(out, shard_layout(prompts, opts))
    done, tokens, seconds = 0, 0, 0.0
    if not matches(out, progress["shard"]):
        out.unlink(missing_ok=True)  # a final file that its record does not vouch for is never trusted
        progress["shard"] = None
        parts_dir(out).mkdir(parents=True, exist_ok=True)
        for c in range(n_chunks):
            if matches(part_path(out, c), progress["parts"].get(str(c))):
                continue
            start = time.perf_counter()
            lo, hi = c * chunk_prompts, min((c + 1) * chunk_prompts, len(prompts))
            progress["parts"][str(c)] = write_table_atomic(
                _chunk_table(expert, amateur, prompts, lo, hi, opts), part_path(out, c)
            )
            atomic_write_json(progress_path(out), progress)
            seconds += time.perf_counter() - start
            done, tokens = done + 1, tokens + (hi - lo) * continuations * new_tokens
            if log:
                log(f"{out.name}: chunk {c + 1}/{n_chunks} written ({(hi - lo) * continuations} samples)")
        tables = [pq.read_table(part_path(out, c), schema=SCHEMA) for c in range(n_chunks)]
        progress["shard"] = write_table_atomic(
            pa.concat_tables(tables) if tables else SCHEMA.empty_table(), out
        )
        atomic_write_json(progress_path(out), progress | {"parts": {}})
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    stats = shard_stats(out)
    stats.update(
        {
            "chunks": n_chunks,
            "chunks_generated": done,
            "generate_s": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        }
    )
    return stats

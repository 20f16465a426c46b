"""corpus: once every shard of a method is done, check their token counts against the plan and build
the synthetic token array the retrained runs read (documents split at special tokens)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cdhpc.lm.data import BOS_ID, EOS_ID, SPECIAL_IDS
from jobs import StepContext, StepResult


def documents(shard_paths: list) -> Iterator[np.ndarray]:
    """Every document of every sample, in shard order, as <s> ids </s>."""
    import pyarrow.parquet as pq

    from cdhpc.lm.shards import split_documents

    for path in shard_paths:
        for ids in pq.read_table(path, columns=["input_ids"]).column("input_ids").to_pylist():
            for doc in split_documents(ids, SPECIAL_IDS):
                yield np.array([BOS_ID, *doc, EOS_ID], dtype=np.int64)


def run(ctx: StepContext) -> StepResult:
    from cdhpc.lm.data import write_token_array

    roles = sorted(r for r in ctx.spec.inputs if r.startswith("shard-"))
    receipts = [ctx.input_receipt(r) for r in roles]
    generated = sum(r.metrics["generated_tokens"] for r in receipts)
    expected = sum(
        (r.spec["params"]["prompts"][1] - r.spec["params"]["prompts"][0])
        * r.spec["params"]["continuations"]
        * r.spec["params"]["new_tokens"]
        for r in receipts
    )
    if generated != expected:
        raise RuntimeError(f"shards hold {generated} generated tokens, the plan asked for {expected}")
    paths = [ctx.input_dir(r) / "shard.parquet" for r in roles]
    meta = write_token_array(
        ctx.out_dir / "tokens",
        documents(paths),
        ctx.params["vocab_size"],
        {"method": ctx.params["method"], "shards": [r.outputs[0].sha256 for r in receipts]},
    )
    return StepResult(
        metrics={
            "generated_tokens": generated,
            "target_tokens": ctx.params["target_tokens"],
            "n_tokens": meta["n_tokens"],
            "n_docs": meta["n_docs"],
        }
    )

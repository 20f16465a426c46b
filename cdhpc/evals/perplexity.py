"""Perplexity on the held-out split: documents of `HELDOUT_DIR/<source>.txt` (groups of
non-empty lines separated by an empty line, lines joined by newlines), each tokenized as
`<s> text </s>`, all concatenated in sorted file order and cut into blocks of
min(1024, model context) tokens (a trailing partial block is dropped unless it is the only one).
ppl = exp(mean token cross-entropy); the per-block mean losses are kept for the bootstrap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cdhpc.evals.data import EvalDataError, read_documents
from cdhpc.evals.task import Task

VERSION = "perplexity-1"
MAX_BLOCK = 1024


def heldout_ids(tokenizer: Any, files: list[Path]) -> list[int]:
    """Token ids of every document of `files` (sorted), each as BOS + text + EOS."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("perplexity needs a tokenizer with bos_token and eos_token (<s>, </s>)")
    ids: list[int] = []
    for path in sorted(files):
        docs = read_documents(path)
        if not docs:
            raise EvalDataError(f"{path}: no documents (expected text lines)")
        for doc in docs:
            ids += [bos] + list(tokenizer(doc, add_special_tokens=False)["input_ids"]) + [eos]
    return ids


def cut_blocks(ids: list[int], block: int) -> list[list[int]]:
    """Consecutive blocks of `block` tokens; the trailing remainder is dropped unless no full
    block exists (then the remainder, if it has >= 2 tokens, is the one block)."""
    full = [ids[s : s + block] for s in range(0, len(ids) - block + 1, block)]
    if full:
        return full
    if len(ids) < 2:
        raise EvalDataError(f"held-out text has {len(ids)} token(s); need >= 2 for perplexity")
    return [ids]


def summarize_perplexity(
    losses: list[float], block: int
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per-block rows, summary fields (score = ppl) and no official files (none exist)."""
    mean = sum(losses) / len(losses)
    rows = [{"uid": "heldout", "item_id": i, "mean_loss": loss} for i, loss in enumerate(losses)]
    fields = {
        "score": math.exp(mean),
        "per_uid": {"heldout": math.exp(mean)},
        "n_items": len(losses),
        "metric": "perplexity",
        "block_tokens": block,
        "mean_loss": mean,
    }
    return rows, fields, {}


TASK = Task("perplexity", VERSION, "perplexity", "", "", "*.txt", metric="perplexity")

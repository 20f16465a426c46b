"""generate: one shard of a method's synthetic corpus (one job-array element), resumable by chunks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cdhpc.config.sections import DecodingConfig
from cdhpc.lm.data import SPECIAL_IDS
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")


def prompts_for(seed_docs: list[np.ndarray], lo: int, hi: int, prompt_tokens: int) -> list[list[int]]:
    """Pure: prompts lo..hi-1, each the first `prompt_tokens` tokens (<s> + text) of a seed document
    long enough to give one; the seed split is cycled when the target needs more prompts."""
    usable = [d[:prompt_tokens] for d in seed_docs if len(d) > prompt_tokens]
    if not usable:
        raise ValueError(f"no seed document is longer than prompt_tokens={prompt_tokens}")
    return [usable[j % len(usable)].tolist() for j in range(lo, hi)]


def decoding_params(decoding: dict):
    from cdhpc.lm.decoding import DecodingParams

    d = DecodingConfig.model_validate(decoding)
    return DecodingParams(
        mode=d.mode,
        alpha=d.alpha,
        strict_head=d.strict_head,
        lam=d.lam,
        temperature=d.temperature,
        amateur_temperature=d.amateur_temperature,
        eps=d.eps,
        tail=d.tail,
        top_k=d.top_k,
        top_p=d.top_p,
    )


def load_lm(path, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def resumable(ctx: StepContext) -> list[Path]:
    """What a re-run keeps: the flushed parts, their progress record and the shard file. write_shard
    trusts each only while it matches its recorded sha256 under the same layout (a truncated
    shard.parquet, a part of another chunk size) and generates the rest again."""
    from cdhpc.lm.shards import parts_dir, progress_path

    out = ctx.out_dir / "shard.parquet"
    return [parts_dir(out), progress_path(out), out]


def run(ctx: StepContext) -> StepResult:
    import torch
    from transformers import AutoTokenizer

    from cdhpc.lm.data import TokenArray
    from cdhpc.lm.shards import write_shard

    p = ctx.params
    device = "cuda" if torch.cuda.is_available() else "cpu"
    selection = json.loads((ctx.input_dir("select") / "selection.json").read_text())
    tok_dir = ctx.input_dir("tokenizer")
    seed_split = TokenArray.open(tok_dir / "tokens" / "seed")
    prompts = prompts_for(
        [seed_split.document(i) for i in range(seed_split.n_docs)], *p["prompts"], p["prompt_tokens"]
    )
    expert = load_lm(ctx.workdir / selection["good"]["path"], device)
    bad = selection["bad"]
    amateur = load_lm(ctx.workdir / bad["path"], device) if bad and "dropout" not in bad else None
    tokenizer = AutoTokenizer.from_pretrained(tok_dir / "tokenizer")
    stats = write_shard(
        expert,
        amateur,
        prompts,
        ctx.out_dir / "shard.parquet",
        params=decoding_params(p["decoding"]),
        seed=p["seed"],
        continuations=p["continuations"],
        new_tokens=p["new_tokens"],
        batch_size=ctx.spec.options.get("batch_size", 64),
        chunk_prompts=ctx.spec.options.get("chunk_prompts", 64),
        special_ids=SPECIAL_IDS,
        keep_prompt=p["keep_prompt"],
        decode=lambda ids: tokenizer.decode(ids),
        amateur_dropout=bad.get("dropout") if bad else None,
        device=device,
        log=log.info,
    )
    rows = [
        {
            "method": p["method"],
            "shard": p["shard"],
            "path": str((ctx.out_dir / "shard.parquet").relative_to(ctx.workdir)),
            "samples": stats["samples"],
            "tokens": stats["generated_tokens"],
            "sha256": stats["sha256"],
        }
    ]
    return StepResult(outputs=[ctx.out_dir / "shard.parquet"], metrics=stats, rows={"shards": rows})

"""prepare: the training corpus (train/seed/test splits of <source>.txt): generated (toy, with the
evaluation data in the BabyLM 2025 layout), built from BabyLM 2024 + TinyStories (tinybabylm), or
an existing prepared directory."""

from __future__ import annotations

import logging
import shutil

from cdhpc.config import DataConfig
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")


def run(ctx: StepContext) -> StepResult:
    data = DataConfig.model_validate(ctx.params["data"])
    shutil.rmtree(ctx.out_dir, ignore_errors=True)  # a fresh run owns its output directory
    if data.kind == "toy":
        from cdhpc.toydata import write_toy

        counts = write_toy(ctx.out_dir, seed=ctx.params["seed"], train_docs=data.toy.train_docs,
                           seed_docs=data.toy.seed_docs, test_docs=data.toy.test_docs)
        return StepResult(metrics={"corpus_dir": None, "counts": counts})
    if data.kind == "prepared":
        from cdhpc.receipts import describe_outputs

        # The corpus stays where it is; its files' hashes go into the receipt's metrics.
        files = describe_outputs(data.corpus_dir.parent, [data.corpus_dir])
        ctx.out_dir.mkdir(parents=True)
        return StepResult(outputs=[], metrics={"corpus_dir": str(data.corpus_dir.resolve()),
                                               "files": {f.path: f.sha256 for f in files}})
    from cdhpc.tinybabylm import build_tinybabylm

    counts = build_tinybabylm(data.babylm_dir, data.tinystories, ctx.out_dir / "corpus",
                              tinystories_words=data.tinystories_words, seed_fraction=data.seed_fraction,
                              split_seed=data.split_seed, chunk_words=tuple(data.chunk_words), log=log.info)
    return StepResult(metrics={"corpus_dir": None, "counts": counts})


def corpus_dir(ctx: StepContext, role: str = "corpus"):
    """Where the prepare step `role` put (or found) the corpus splits."""
    from pathlib import Path

    r = ctx.input_receipt(role)
    return Path(r.metrics["corpus_dir"]) if r.metrics.get("corpus_dir") else ctx.input_dir(role) / "corpus"

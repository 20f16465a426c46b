"""tokenizer: train the paper's BPE tokenizer on the train split, then encode every split once into
memory-mapped token arrays (tokens/<split>/) that all runs share."""

from __future__ import annotations

from cdhpc.lm.data import encode_split, train_tokenizer
from jobs import StepContext, StepResult
from jobs.prepare import corpus_dir

SPLITS = ("train", "seed", "test")


def run(ctx: StepContext) -> StepResult:
    corpus = corpus_dir(ctx)
    tok = ctx.params["tokenizer"]
    doc_sep = ctx.params["doc_sep"]
    info = train_tokenizer(
        corpus / "train",
        ctx.out_dir / "tokenizer",
        vocab_size=tok["vocab_size"],
        min_frequency=tok["min_frequency"],
        doc_sep=doc_sep,
    )
    arrays = {
        split: encode_split(
            ctx.out_dir / "tokenizer", corpus / split, ctx.out_dir / "tokens" / split, doc_sep=doc_sep
        )
        for split in SPLITS
    }
    return StepResult(
        metrics={
            "tokenizer_sha256": info["tokenizer_sha256"],
            "vocab_size": info["vocab_size"],
            "arrays": {
                s: {"n_tokens": m["n_tokens"], "n_docs": m["n_docs"], "dtype": m["dtype"]}
                for s, m in arrays.items()
            },
        }
    )

"""prepare: the training corpus (train/seed/test splits of <source>.txt): generated (toy, with the
evaluation data in the BabyLM 2025 layout), built from BabyLM 2024 + TinyStories (tinybabylm; each
a text release, a `save_to_disk` dataset or a cached hub id, cdhpc.config.hfdata), or an existing
prepared directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cdhpc.config.sections import DataConfig
from jobs import StepContext, StepResult

log = logging.getLogger("cdhpc")


def run(ctx: StepContext) -> StepResult:
    data = DataConfig.model_validate(ctx.params["data"])
    shutil.rmtree(ctx.out_dir, ignore_errors=True)  # a fresh run owns its output directory
    if data.kind == "toy":
        from cdhpc.corpora.toy.build import write_toy

        counts = write_toy(
            ctx.out_dir,
            seed=ctx.params["seed"],
            train_docs=data.toy.train_docs,
            seed_docs=data.toy.seed_docs,
            test_docs=data.toy.test_docs,
        )
        return StepResult(metrics={"corpus_dir": None, "counts": counts})
    if data.kind == "prepared":
        from cdhpc.sweep.receipts import describe_outputs

        # The corpus stays where it is; its files' hashes go into the receipt's metrics.
        files = describe_outputs(data.corpus_dir.parent, [data.corpus_dir])
        ctx.out_dir.mkdir(parents=True)
        return StepResult(
            outputs=[],
            metrics={
                "corpus_dir": str(data.corpus_dir.resolve()),
                "files": {f.path: f.sha256 for f in files},
            },
        )
    from cdhpc.corpora.tinybabylm import build_tinybabylm

    sources = ctx.out_dir / "sources"  # `datasets` inputs as text, and their Arrow cache: inside the workdir
    babylm, tinystories, provenance = text_sources(data, sources)
    counts = build_tinybabylm(
        babylm,
        tinystories,
        ctx.out_dir / "corpus",
        tinystories_words=data.tinystories_words,
        seed_fraction=data.seed_fraction,
        split_seed=data.split_seed,
        chunk_words=tuple(data.chunk_words),
        log=log.info,
    )
    shutil.rmtree(sources, ignore_errors=True)  # only the corpus is the step's output
    return StepResult(
        metrics={"corpus_dir": None, "counts": counts} | ({"sources": provenance} if provenance else {})
    )


def text_sources(data: DataConfig, out: Path) -> tuple[Path, Path, dict[str, str]]:
    """(babylm_dir, tinystories) as text folders: local paths as they are; a `save_to_disk`
    dataset or a cached hub id (cdhpc.config.hfdata) written out under `out`. Third: where each
    `datasets` input came from (its fingerprints or hub commit)."""
    from cdhpc.config.hfdata import materialize_babylm, materialize_tinystories, source_kind

    babylm, tinystories, provenance = data.babylm_dir, data.tinystories, {}
    if source_kind(babylm) in ("saved", "hub"):
        babylm, provenance["babylm_dir"] = materialize_babylm(babylm, out / "babylm", out / "hf-cache")
        log.info("data.babylm_dir %s: read with datasets (%s)", data.babylm_dir, provenance["babylm_dir"])
    if source_kind(tinystories) in ("saved", "hub"):
        tinystories, provenance["tinystories"] = materialize_tinystories(
            tinystories, out / "tinystories", out / "hf-cache"
        )
        log.info("data.tinystories %s: read with datasets (%s)", data.tinystories, provenance["tinystories"])
    return babylm, tinystories, provenance


def corpus_dir(ctx: StepContext, role: str = "corpus"):
    """Where the prepare step `role` put (or found) the corpus splits."""
    r = ctx.input_receipt(role)
    return Path(r.metrics["corpus_dir"]) if r.metrics.get("corpus_dir") else ctx.input_dir(role) / "corpus"

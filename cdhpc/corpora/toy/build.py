"""A tiny TinyBabyLM-shaped corpus and BabyLM 2025 evaluation data, drawn from ONE toy grammar.

The corpus (`corpus/{train,seed,test}/<source>.txt`) and every evaluation file
(`evaluation_data/{full_eval,fast_eval}/...`, the official on-disk layout and record fields) come
from the same lexicon and templates, so a 4x128 LLaMA trained on ~0.6M words can beat chance:
subject-verb agreement (across a PP / an object relative clause), determiner-noun agreement,
reflexives, a fixed hidden world (animal sizes, social roles, hypernyms), entity tracking in boxes,
-ness/-ity nominalisation (productive rule + exceptions, WUG), and story-like documents; the
past tense of nonce verbs, COMPS property inheritance and AoA data come from `cdhpc.corpora.toy.tasks`.

Everything is pure and seeded (`random.Random` streams keyed by seed and purpose); only
`write_toy` and `main` touch the filesystem. Same seed -> byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cdhpc.corpora.toy import tasks as toytasks
from cdhpc.corpora.toy.corpus import _n_words, corpus_split, render_docs
from cdhpc.corpora.toy.evalsets import (
    BLIMP_UIDS,
    ENTITY_FILES,
    EWOK_DOMAINS,
    _unique,
    bigram_counts,
    blimp_records,
    entity_records,
    reading_rows,
    render_csv,
    supplement_records,
    wug_records,
)
from cdhpc.corpora.toy.lexicon import HYPERNYMS, NOMINAL_ADJS, NOUNS, STORY_ADJS, THINGS, VERBS

# ------------------------------------------------------------ assembling and writing ----------
# task -> (full_eval folder, fast_eval folder or None: no fast version); fast sets are every other
# item of the full set.
EVAL_DIRS = {
    "blimp": ("blimp_filtered", "blimp_fast"),
    "supplement": ("supplement_filtered", "supplement_fast"),
    "ewok": ("ewok_filtered", "ewok_fast"),
    "entity": ("entity_tracking", "entity_tracking_fast"),
    "wug": ("wug_adj_nominalization", "wug_adj_nominalization"),
    "reading": ("reading", "reading"),
    "wug_past": ("wug_past_tense", "wug_past_tense"),
    "comps": ("comps", None),
    "aoa": ("aoa", None),
}
SUPPLEMENT_FILES = ("hypernym", "subject_aux_inversion")
AOA_LEXICON = sorted(
    set(NOUNS)
    | set(THINGS)
    | set(VERBS)
    | set(STORY_ADJS)
    | set(NOMINAL_ADJS)
    | set(HYPERNYMS)
    | {w for words in HYPERNYMS.values() for w in words}
)


def aoa_docs(seed: int) -> list[list[str]]:
    """Held-out documents (their own RNG streams) the AoA contexts are drawn from."""
    return [doc for docs in corpus_split(seed, "aoa", 300).values() for doc in docs]


def eval_sets(seed: int, uni: Counter, bi: Counter) -> list[tuple[str, str, list]]:
    """(task, file name, full records) for every evaluation file; one RNG stream per file."""

    def rng(name: str) -> random.Random:
        return random.Random(f"cdhpc-toy:{seed}:eval:{name}")

    out = [("blimp", f"{u}.jsonl", blimp_records(rng(u), u, 100)) for u in BLIMP_UIDS]
    out += [("supplement", f"{n}.jsonl", supplement_records(rng(n), n, 100)) for n in SUPPLEMENT_FILES]
    out += [("ewok", f"{d}.jsonl", _unique(rng(d), 100, make)) for d, make in EWOK_DOMAINS.items()]
    out += [("entity", f"{n}.jsonl", entity_records(rng(n), n, 120)) for n in ENTITY_FILES]
    out += [("wug", "wug_adj_nominalization.jsonl", wug_records(rng("wug"), 100))]
    out += [("reading", "reading_data.csv", reading_rows(rng("reading"), 40, uni, bi))]
    out += [("wug_past", "wug_past_tense.jsonl", toytasks.wug_past_records(rng("wug_past"), 100))]
    out += [("comps", f"{n}.jsonl", toytasks.comps_records(rng(n), n, 80)) for n in toytasks.COMPS_FILES]
    words, human = toytasks.aoa_sets(rng("aoa"), aoa_docs(seed), uni, AOA_LEXICON)
    return out + [("aoa", "cdi_childes.json", words), ("aoa", "cdi_human.csv", human)]


def _render_eval(task: str, name: str, records: list, fast: bool) -> tuple[str, int]:
    if task == "aoa":
        return toytasks.render_aoa(name, records)
    if task == "reading":
        rows = [r for r in records if r[6] % 2 == 0] if fast else records
        return render_csv([[i] + r[1:] for i, r in enumerate(rows)]), len(rows)
    recs = records[::2] if fast else records
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), len(recs)


def build_toy(seed: int, train_docs: int, seed_docs: int, test_docs: int) -> tuple[dict[str, str], dict]:
    """All files as {relative path: text} plus their counts (pure: nothing is written)."""
    files: dict[str, str] = {}
    counts: dict = {"corpus": {}, "eval": {}}
    train_text: list[list[str]] = []
    for split, n in (("train", train_docs), ("seed", seed_docs), ("test", test_docs)):
        counts["corpus"][split] = {}
        for src, docs in corpus_split(seed, split, n).items():
            files[f"corpus/{split}/{src}.txt"] = render_docs(docs)
            counts["corpus"][split][src] = {"docs": len(docs), "words": sum(map(_n_words, docs))}
            train_text += docs if split == "train" else []
    for task, name, records in eval_sets(seed, *bigram_counts(train_text)):
        full_dir, fast_dir = EVAL_DIRS[task]
        folders = [(f"full_eval/{full_dir}", False)] + ([(f"fast_eval/{fast_dir}", True)] if fast_dir else [])
        for folder, fast in folders:
            rel = f"evaluation_data/{folder}/{name}"
            files[rel], counts["eval"][rel] = _render_eval(task, name, records, fast)
    return files, counts


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out}: exists and is not an empty directory; toydata only writes a "
            "fresh tree (remove it or pass another path)"
        )


def write_toy(
    out: Path, seed: int = 0, *, train_docs: int = 6000, seed_docs: int = 300, test_docs: int = 300
) -> dict:
    """Writes out/corpus/... and out/evaluation_data/...; returns counts (docs/words per split and
    source, items per eval file). Deterministic: same seed -> byte-identical files. Atomic enough:
    write into a temp dir next to `out` and rename it into place at the end.

    Defaults give ~0.7M train words (words = whitespace-separated tokens) in ~2-3 s."""
    out = Path(out)
    _check_target(out)
    for key, value in (("train_docs", train_docs), ("seed_docs", seed_docs), ("test_docs", test_docs)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"write_toy: {key}={value!r}; allowed: an integer >= 1")
    files, counts = build_toy(seed, train_docs, seed_docs, test_docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(tmp / rel, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
        _check_target(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv: list[str] | None = None) -> int:
    """`python -m cdhpc.toydata OUT [--seed N] [--train-docs N] [--seed-docs N] [--test-docs N]`."""
    parser = argparse.ArgumentParser(prog="python -m cdhpc.toydata", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output directory (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-docs", type=int, default=6000)
    parser.add_argument("--seed-docs", type=int, default=300)
    parser.add_argument("--test-docs", type=int, default=300)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        counts = write_toy(
            args.out,
            args.seed,
            train_docs=args.train_docs,
            seed_docs=args.seed_docs,
            test_docs=args.test_docs,
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, by_src in counts["corpus"].items():
        words, docs = sum(c["words"] for c in by_src.values()), sum(c["docs"] for c in by_src.values())
        print(f"corpus/{split}: {docs} docs, {words} words ({', '.join(by_src)})")
    print(f"evaluation_data: {len(counts['eval'])} files, {sum(counts['eval'].values())} items/rows")
    print(f"wrote {args.out} (seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

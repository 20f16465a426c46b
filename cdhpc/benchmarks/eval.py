"""`python -m cdhpc.bench eval [--device cpu|cuda] [--pairs N]`: BLiMP-style minimal pairs scored
by our engine vs the official pipeline's way (fixed batches of 64 in file order, each candidate
its own padded batch, full log-softmax over B x T x V), same model, same data, one run.
Reports pairs/s of both, the ratio, and whether every decision is identical.

`python -m cdhpc.bench eval --checkpoints 8 [--preset NAME]`: the pack cache instead. One run's
checkpoints (same tokenizer, other weights) are evaluated on BLiMP-shaped files by `evaluate_task`,
as a sweep's evaluate steps do: one at a time without a cache (each a full prepare + score, as
before the cache), and with a fresh cache (the first builds the pack, the others reuse it, as one
job scoring several checkpoints); also with a warm disk cache and nothing in memory (a sweep's
separate jobs). Seconds per checkpoint of each, best of interleaved repeats, the ratio, and whether
every output file is identical (asserted)."""

from __future__ import annotations

import argparse
import time
from typing import Any

PRESETS = {
    "cpu": dict(layers=4, hidden=256, heads=4, mlp=1024, vocab=8000),
    "cuda": dict(layers=12, hidden=768, heads=12, mlp=3072, vocab=32000),
    # a model as much faster than the CPU preset as a GPU is for the 12x768 one: its scoring
    # takes about as long as the host work (BLiMP on an H100/H200: ~3.4 s host, a few s device)
    "cpu-small": dict(layers=2, hidden=32, heads=2, mlp=128, vocab=1000),
}


def make_words(rng: Any, vocab: int) -> list[str]:
    """`vocab - 5` distinct pseudo-words (the specials and "." take ids 0-4)."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < vocab - 5:
        n = int(rng.integers(1, 4))
        words.add("".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(n)))
    return sorted(words)


def make_pairs(rng: Any, words: list[str], n: int) -> list[tuple[str, str]]:
    """BLiMP-shaped pairs: a sentence of 3-20 words (log-normal, median 8, as BLiMP's short
    template sentences) and a copy with two adjacent words swapped or one word replaced at a
    uniformly drawn position (so good and bad share a prefix of varying length). Words are drawn
    as `rng.choice(words, p=zipf)` draws them (the same numbers), with the cdf computed once:
    choice recomputes it per call, which took minutes at 67,000 pairs of a 32k vocabulary."""
    import numpy as np

    zipf = 1.0 / (1 + rng.permutation(len(words)))
    cdf = (zipf / zipf.sum()).cumsum()
    cdf /= cdf[-1]
    vocab = np.asarray(words)

    def draw(size: Any = None) -> Any:
        return vocab[cdf.searchsorted(rng.random(size), side="right")]

    pairs = []
    for _ in range(n):
        length = int(np.clip(round(8 * np.exp(0.35 * rng.standard_normal())), 3, 20))
        sent = list(draw(length))
        bad = list(sent)
        k = int(rng.integers(0, len(sent) - 1))
        if rng.random() < 0.5:
            bad[k], bad[k + 1] = bad[k + 1], bad[k]
        else:
            bad[k] = str(draw())
        pairs.append((" ".join(sent) + ".", " ".join(bad) + "."))
    return pairs


def build(device: str, seed: int = 0, preset: str | None = None) -> tuple[Any, Any, list[str]]:
    """A random-init Llama of the device's preset and a word-level tokenizer over pseudo-words
    that adds a BOS, as this project's tokenizers do (so the official scoring rule, our default,
    scores every word, as the reference does)."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = PRESETS[preset or device]
    words = make_words(np.random.default_rng(seed), cfg["vocab"])
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", "."] + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    lcfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=cfg["hidden"],
        num_attention_heads=cfg["heads"],
        intermediate_size=cfg["mlp"],
        num_hidden_layers=cfg["layers"],
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    with torch.device(device):  # initialised where it runs: a 12x768 model takes seconds on a CPU
        model = LlamaForCausalLM(lcfg).to(dtype=dtype).eval()
    model.generation_config.pad_token_id = None  # a random model: nothing to say (save_pretrained checks it)
    return model, tok, words


def reference_scores(
    model: Any, tok: Any, pairs: list[tuple[str, str]], device: str, batch_size: int = 64
) -> list[list[float]]:
    """The official causal scorer: per batch of 64 pairs in file order, each candidate padded and
    run on its own, full log-softmax, gather, phrase-mask sum (whole sentence after BOS)."""
    import torch

    out: list[list[float]] = []
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            batch = pairs[s : s + batch_size]
            cand_scores = []
            for c in range(2):
                seqs = [[tok.bos_token_id] + tok(p[c], add_special_tokens=False)["input_ids"] for p in batch]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), tok.pad_token_id)
                att = torch.zeros((len(seqs), width), dtype=torch.long)
                for i, q in enumerate(seqs):
                    ids[i, : len(q)], att[i, : len(q)] = torch.tensor(q), 1
                ids, att = ids.to(device), att.to(device)
                logits = model(input_ids=ids[:, :-1], attention_mask=att[:, :-1]).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                tgt = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
                cand_scores.append((tgt * att[:, 1:]).sum(1).cpu())
            out.extend(torch.stack(cand_scores, 1).tolist())
    return out


def _interleaved(fns: dict[str, Any], device: str, repeats: int) -> tuple[dict, dict]:
    """Each function's result and best wall time (s), the functions run in turn `repeats` times
    (the machine is shared: interleaving spreads a slow spell over both, the minimum is the least
    disturbed run)."""
    import torch

    best = {k: float("inf") for k in fns}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results[name] = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return results, best


def token_counts(
    tok: Any, pairs: list[tuple[str, str]], reqs: list[Any], batch_size: int, sample: int = 2000
) -> dict:
    """Tokens per pair through the body: the reference's padded batches vs our packed rows, over
    the first `sample` pairs (at 67,000 pairs counting them all took longer than scoring them)."""
    import numpy as np

    from cdhpc.evals.batches import plan_batches
    from cdhpc.evals.engine import pack_requests

    pairs, reqs = pairs[:sample], reqs[: 2 * sample]
    lens = [[len(tok(p[c], add_special_tokens=False)["input_ids"]) for c in range(2)] for p in pairs]
    ref = sum(
        len(lens[s : s + 64]) * max(x[c] for x in lens[s : s + 64])
        for s in range(0, len(pairs), 64)
        for c in range(2)
    )
    rows = pack_requests(tok, reqs)
    ours = sum(len(b) * len(b[0].ids) for b in plan_batches(rows, batch_size))
    return {
        "ref_tokens_per_pair": ref / len(pairs),
        "our_tokens_per_pair": ours / len(pairs),
        "our_head_rows_per_pair": sum(len(np.unique(r.pair_nodes)) for r in rows) / len(pairs),
        "token_count_pairs": len(pairs),
    }


BF16_DECISION_TOLERANCE = 0.05
"""nats: a pair whose reference margin (good - bad) is within this may flip between two bf16
scorers that batch differently (bf16 scores move by ~1e-2 nats; docs/evaluation.md)."""


def decision_check(ours: list[list[float]], ref: list[list[float]], tolerance: float) -> dict:
    """Pairs decided differently from the reference, and whether every one of them lies within
    `tolerance` of a tie (by the reference's margin)."""
    flips = [abs(r[0] - r[1]) for o, r in zip(ours, ref) if (o[0] >= o[1]) != (r[0] >= r[1])]
    return {
        "identical_decisions": not flips,
        "decision_flips": len(flips),
        "max_flip_margin": max(flips, default=0.0),
        "decision_tolerance": tolerance,
        "decisions_agree": all(m <= tolerance for m in flips),
    }


def run(argv: list[str]) -> dict:
    """Measure both scorers on the same pairs (best of `--repeats` interleaved runs each, after a
    warm-up); check that every decision agrees."""
    import numpy as np
    import torch

    from cdhpc.evals.engine import ScoreRequest, score_candidates

    ap = argparse.ArgumentParser(prog="python -m cdhpc.bench eval")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--pairs", type=int, default=None, help="default 2000 (cpu), 8000 (cuda)")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="ours: rows per batch (default 32 on cpu, 64 on cuda; --checkpoints: 64, a sweep's default)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="interleaved runs; fastest kept (default 5)")
    ap.add_argument(
        "--checkpoints",
        type=int,
        default=None,
        help="measure the pack cache instead: N checkpoints of one run with it vs one at a time without",
    )
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="model size (default: the device's)"
    )
    args = ap.parse_args(argv)
    if args.checkpoints is not None:
        return run_checkpoints(args)
    args.repeats = args.repeats or 5
    n = args.pairs or (2000 if args.device == "cpu" else 8000)
    bs = args.batch_size or (32 if args.device == "cpu" else 64)
    model, tok, words = build(args.device, preset=args.preset)
    pairs = make_pairs(np.random.default_rng(1), words, n)
    reqs = [ScoreRequest("", s) for p in pairs for s in p]
    warm = min(128, n)
    reference_scores(model, tok, pairs[:warm], args.device)
    score_candidates(model, tok, reqs[: 2 * warm], batch_size=bs, device=args.device)
    results, best = _interleaved(
        {
            "peer": lambda: reference_scores(model, tok, pairs, args.device),
            "ours": lambda: score_candidates(model, tok, reqs, batch_size=bs, device=args.device),
        },
        args.device,
        args.repeats,
    )
    ref, ours, t_ref, t_ours = results["peer"], results["ours"], best["peer"], best["ours"]
    ours_pairs = [ours[2 * i : 2 * i + 2] for i in range(n)]
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    decisions = decision_check(ours_pairs, ref, BF16_DECISION_TOLERANCE if bf16 else 0.0)
    max_diff = max(abs(a - b) for o, r in zip(ours_pairs, ref) for a, b in zip(o, r))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {
        "bench": "eval",
        "device": device_name,
        "ours": n / t_ours,
        "peer": n / t_ref,
        "ratio": t_ref / t_ours,
        "unit": "pairs/s",
        "pairs": n,
        **decisions,
        "max_abs_score_diff": max_diff,
        "model": PRESETS[args.preset or args.device],
        "batch_size_ours": bs,
        "threads": torch.get_num_threads(),
        "ours_s": t_ours,
        "peer_s": t_ref,
        **token_counts(tok, pairs, reqs, bs),
    }


def write_run(root: Any, model: Any, tok: Any, n: int) -> list[Any]:
    """`n` checkpoint folders step_K of one run: the model's weights scaled per step (other
    weights, other scores), the same tokenizer files in each."""
    import torch

    folders = []
    for k in range(n):
        folder = root / "checkpoints" / f"step_{(k + 1) * 100}"
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.02)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return folders


def write_blimp(root: Any, pairs: list[tuple[str, str]], files: int = 8) -> Any:
    """The pairs as BLiMP files (`files` phenomena) in the official layout under root."""
    import json

    out = root / "evaluation_data"
    per = -(-len(pairs) // files)
    for f in range(files):
        path = out / "full_eval" / "blimp_filtered" / f"phenomenon_{f}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "sentence_good": g,
                        "sentence_bad": b,
                        "field": "syntax",
                        "linguistics_term": "order",
                        "UID": f"phenomenon_{f}",
                    }
                )
                + "\n"
                for g, b in pairs[f * per : (f + 1) * per]
            )
        )
    return out


def _evaluate_all(folders: list[Any], data: Any, out: Any, options: Any, cache: Any, cold_memo: bool) -> list:
    """Every checkpoint through `evaluate_task` (blimp); each one's output files (bytes).
    `cold_memo`: forget the packs in memory before each (a sweep's separate jobs)."""
    from cdhpc.evals import packcache
    from cdhpc.evals.run import evaluate_task

    outputs = []
    for k, folder in enumerate(folders):
        if cold_memo:
            packcache.clear_memo()
        evaluate_task(folder, "blimp", data, out / str(k), options=options, cache_dir=cache)
        outputs.append(
            {p.name: p.read_bytes() for p in sorted((out / str(k)).iterdir()) if p.name != "summary.json"}
        )  # summary.json names the model folder only
    return outputs


def run_checkpoints(args: Any) -> dict:
    """`--checkpoints N`: per-checkpoint seconds of one run's checkpoints evaluated one at a time
    without the pack cache, with a fresh cache (one job), and from a warm disk cache with nothing
    in memory (separate jobs); best of interleaved repeats; identical outputs asserted."""
    import logging
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    import transformers

    from cdhpc.evals import packcache
    from cdhpc.evals.run import EvalOptions

    logging.getLogger("transformers").setLevel(logging.ERROR)  # no load-progress lines in the JSON output
    transformers.utils.logging.disable_progress_bar()  # nor "Loading weights" bars on stderr
    n, preset = args.checkpoints, args.preset or args.device
    pairs_n = args.pairs or 2000
    # the batch size of a sweep's evaluate steps (the eval section's default), unless given
    options = EvalOptions(device=args.device, batch_size=args.batch_size or EvalOptions().batch_size)
    root = Path(tempfile.mkdtemp(prefix="cdhpc-bench-evalpack-"))
    try:
        model, tok, words = build(args.device, preset=preset)
        folders = write_run(root, model, tok, n)
        data = write_blimp(root, make_pairs(np.random.default_rng(1), words, pairs_n))
        warm = root / "warm"
        _evaluate_all(folders[:1], data, root / "warmup", options, warm, True)  # imports, and the warm cache

        def fresh() -> list:
            packcache.clear_memo()
            shutil.rmtree(root / "fresh", ignore_errors=True)
            return _evaluate_all(folders, data, root / "out", options, root / "fresh", False)

        results, best = _interleaved(
            {
                "uncached": lambda: _evaluate_all(folders, data, root / "out", options, None, True),
                "cached": fresh,
                "disk": lambda: _evaluate_all(folders, data, root / "out", options, warm, True),
            },
            args.device,
            args.repeats or 5,
        )  # 5: on a shared machine 3 left the ratio 1.2-1.7
        assert results["cached"] == results["uncached"] == results["disk"], "the cache changed a score"
        assert len({o["predictions.jsonl"] for o in results["uncached"]}) == n, "checkpoints must differ"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per = {k: v / n for k, v in best.items()}
    return {
        "bench": "eval-checkpoints",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "checkpoints": n,
        "pairs": pairs_n,
        "model": PRESETS[preset],
        "preset": preset,
        "uncached_s_per_checkpoint": per["uncached"],
        "cached_s_per_checkpoint": per["cached"],
        "disk_cached_s_per_checkpoint": per["disk"],
        "ratio": per["uncached"] / per["cached"],
        "ratio_disk": per["uncached"] / per["disk"],
        "identical_outputs": True,
        "batch_size": options.batch_size,
        "threads": torch.get_num_threads(),
    }

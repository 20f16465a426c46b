"""``python -m cdhpc.bench sampler``: tokens/s of our CD sampler vs the authors'-style loop.

Measured side by side in one process, at the same batch, prompt length and new tokens, with the
same decoding distribution (the authors' settings: alpha 0.1 strict, eps 1e-10, tail -20):

- ours_cd / ours_vanilla: ``cdhpc.lm.sampler.generate`` in ``cd`` and ``sample`` mode;
- reference_cd / reference_vanilla: two HF models stepped with ``DynamicCache`` through
  ``model(ids, past_key_values=..., use_cache=True)``, float32 logits, a logits processor that
  computes CD from two softmaxes, then softmax + ``torch.multinomial`` (the authors' loop).

Models are random-init ``LlamaForCausalLM`` (the amateur has the expert's shape, as CD-Early).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict
from typing import Any

from cdhpc.lm.model import PRESETS

AUTHORS = {"mode": "cd", "alpha": 0.1, "strict_head": True, "eps": 1e-10, "tail": -20.0}


def _model(preset: str, vocab: int, seed: int, device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = PRESETS[preset]
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        max_position_embeddings=max(shape.context, 1024),
        pad_token_id=3,
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def _authors_cd(expert_logits: Any, amateur_logits: Any) -> Any:
    """The authors' logits processor: CD scores from two full softmaxes."""
    import torch

    p_g, p_b = torch.softmax(expert_logits, -1), torch.softmax(amateur_logits, -1)
    head = p_g > AUTHORS["alpha"] * p_g.max(dim=-1, keepdim=True).values
    scores = torch.log(p_g + AUTHORS["eps"]) - torch.log(p_b + AUTHORS["eps"])
    return scores.masked_fill(~head, AUTHORS["tail"])


def reference_generate(expert: Any, amateur: Any, ids: Any, new_tokens: int, seed: int) -> Any:
    """The authors'-style loop (``amateur=None``: plain ancestral sampling); ids ``[B, new]``."""
    import torch
    from transformers import DynamicCache

    gen = torch.Generator(device=ids.device).manual_seed(seed)
    models = [m for m in (expert, amateur) if m is not None]
    caches = [DynamicCache(config=m.config) for m in models]
    out, inp = [], ids
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = [
                m(inp, past_key_values=c, use_cache=True).logits[:, -1].float()
                for m, c in zip(models, caches)
            ]
            scores = _authors_cd(*logits) if amateur is not None else logits[0]
            inp = torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)
            out.append(inp)
    return torch.cat(out, dim=1)


def _timed(fn: Any, device: str) -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _ours(
    expert: Any, amateur: Any, prompts: list[list[int]], mode: str, new_tokens: int, batch: int, device: str
) -> None:
    from cdhpc.lm.decoding import DecodingParams
    from cdhpc.lm.sampler import generate

    params = DecodingParams(**AUTHORS) if mode == "cd" else DecodingParams("sample")
    for _ in generate(
        expert,
        amateur if mode == "cd" else None,
        prompts,
        params,
        new_tokens=new_tokens,
        seed=0,
        batch_size=batch,
        device=device,
    ):
        pass


def measure(
    preset: str,
    vocab: int,
    batch: int,
    new_tokens: int,
    prompt_len: int,
    device: str,
    reference: bool = True,
    repeat: int = 1,
) -> dict:
    """Tokens/s of ours (cd, vanilla) and, with ``reference``, of the authors'-style loop.

    The runs are interleaved ``repeat`` times and each keeps its fastest time, so load from
    other users of a shared machine hits all of them alike.
    """
    import torch

    expert, amateur = _model(preset, vocab, 1, device), _model(preset, vocab, 2, device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, prompt_len), generator=gen)
    ids[:, 0] = 1  # <s>
    prompts = ids.tolist()
    n = batch * new_tokens
    runs = {
        "ours_cd": lambda: _ours(expert, amateur, prompts, "cd", new_tokens, batch, device),
        "ours_vanilla": lambda: _ours(expert, None, prompts, "sample", new_tokens, batch, device),
    }
    if reference:
        dev_ids = ids.to(device)
        runs["reference_cd"] = lambda: reference_generate(expert, amateur, dev_ids, new_tokens, 0)
        runs["reference_vanilla"] = lambda: reference_generate(expert, None, dev_ids, new_tokens, 0)
    _ours(expert, amateur, prompts[:8], "cd", 4, batch, device)  # warm-up
    seconds = {name: math.inf for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            seconds[name] = min(seconds[name], _timed(fn, device))
    row: dict[str, Any] = {
        "preset": preset,
        "vocab": vocab,
        "params_m": round(PRESETS[preset].n_params(vocab) / 1e6, 2),
        "batch": batch,
        "new_tokens": new_tokens,
        "prompt_len": prompt_len,
        "repeat": repeat,
    }
    row.update({f"{k}_tokens_per_s": round(n / s, 1) for k, s in seconds.items()})
    row["ours_cd_cost"] = round(seconds["ours_cd"] / seconds["ours_vanilla"], 3)
    if reference:
        row["speedup_cd"] = round(seconds["reference_cd"] / seconds["ours_cd"], 3)
        row["speedup_vanilla"] = round(seconds["reference_vanilla"] / seconds["ours_vanilla"], 3)
    return row


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m cdhpc.bench sampler")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        help="repeatable; default: tiny and small-20 (cpu), llama-12x768 (cuda)",
    )
    ap.add_argument("--vocab", type=int, help="default: 8000 (cpu), 32000 (cuda)")
    ap.add_argument("--batch", type=int, help="default: 64 (cpu), 32 (cuda)")
    ap.add_argument("--big-batch", type=int, default=256, help="cuda only: our CD tokens/s at this batch")
    ap.add_argument("--new-tokens", type=int, default=400)
    ap.add_argument("--prompt-len", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; fastest kept")
    return ap.parse_args(argv)


def run(argv: list[str]) -> dict:
    """Benchmark entry point (see the module docstring); one JSON-able dict."""
    import torch

    a = _parse(argv)
    cuda = a.device == "cuda"
    presets = a.preset or (["llama-12x768"] if cuda else ["tiny", "small-20"])
    vocab, batch = a.vocab or (32000 if cuda else 8000), a.batch or (32 if cuda else 64)
    rows = [measure(p, vocab, batch, a.new_tokens, a.prompt_len, a.device, repeat=a.repeat) for p in presets]
    if cuda and a.big_batch:
        big = measure(
            presets[0],
            vocab,
            a.big_batch,
            a.new_tokens,
            a.prompt_len,
            a.device,
            reference=False,
            repeat=a.repeat,
        )
        rows.append(big)
    first = rows[0]
    from cdhpc.lm.decoding import DecodingParams

    return {
        "bench": "sampler",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "ours": first["ours_cd_tokens_per_s"],
        "peer": first["reference_cd_tokens_per_s"],
        "ratio": first["speedup_cd"],
        "unit": "tokens/s (CD, ours vs authors'-style loop)",
        "ours_cd_cost": first["ours_cd_cost"],
        "rows": rows,
        "decoding": {k: v for k, v in asdict(DecodingParams(**AUTHORS)).items()},
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m_at_end": os.getloadavg()[0],
    }

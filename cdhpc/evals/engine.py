"""The scoring engine: log P(continuation | BOS + context) for many requests, fast and exact.

Every request is tokenized as one string (context + continuation, BOS first) and scored on the
tokens whose character span ends inside the continuation, as the BabyLM 2025 pipeline does
(`phrase_mask`: offset end > len(context)). The sum of those token log-probs is the score.

Why it is fast, with the same numbers as one-string-at-a-time scoring:
- requests of one `group` (the candidates of one item) are merged into a token trie and run as one
  packed row: a shared prefix (BLiMP pair prefix, EWoK/entity-tracking context, the earlier words
  of a reading item) is computed once; each token attends to its ancestors only, and its RoPE
  position is its depth, so every branch sees exactly what it would see alone;
- rows are sorted by length and batched, so padding is small;
- the output head runs only at the scored positions, in bounded row chunks, normalised in fp32:
  no B x T x V logits or log-softmax are ever materialised;
- scores are accumulated on the device and copied to the host once.
torch is imported inside functions so `import cdhpc.evals.engine` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScoreRequest:
    """One candidate: the text it is conditioned on and the text it scores.

    `group` is a sharing hint: requests with the same group are packed into one row (their common
    token prefixes run once). It never changes a score; None packs the request alone.
    """

    context: str
    continuation: str
    group: int | None = None


@dataclass
class PackedRow:
    """A token trie of one group: node ids, RoPE positions (depth), parent nodes (a parent comes
    before its children), and the unique (predictor node, target id) pairs with the requests
    that sum them."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    members: list[tuple[int, int]] = field(default_factory=list)  # (request index, pair index)


def encode_request(tokenizer: Any, request: ScoreRequest, bos_id: int) -> tuple[list[int], list[int]]:
    """Token ids of BOS + context + continuation and the indices (>= 1) of the scored tokens."""
    text = request.context + request.continuation
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = len(request.context)
    scored = [j + 1 for j, (_, end) in enumerate(enc["offset_mapping"]) if end > start]
    return [bos_id] + list(enc["input_ids"]), scored


def pack_group(encoded: list[tuple[int, list[int], list[int]]]) -> PackedRow:
    """Merge (request index, ids, scored indices) sequences sharing ids[0] into one trie row.
    Only the tokens that condition a scored token become nodes."""
    row = PackedRow(ids=[encoded[0][1][0]], positions=[0], parents=[0])
    children: dict[tuple[int, int], int] = {}
    pair_index: dict[tuple[int, int], int] = {}
    for req_index, ids, scored in encoded:
        nodes = [0]
        # a token that predicts nothing scored needs no hidden state: stop before the last target
        for depth, tok in enumerate(ids[1:max(scored, default=1)], start=1):
            parent = nodes[-1]
            node = children.get((parent, tok))
            if node is None:
                node = len(row.ids)
                children[(parent, tok)] = node
                row.ids.append(tok)
                row.positions.append(depth)
                row.parents.append(parent)
            nodes.append(node)
        for j in scored:
            key = (nodes[j - 1], ids[j])
            if key not in pair_index:
                pair_index[key] = len(row.pairs)
                row.pairs.append(key)
            row.members.append((req_index, pair_index[key]))
    return row


def pack_requests(tokenizer: Any, requests: list[ScoreRequest], bos_id: int) -> list[PackedRow]:
    """Encode every request and pack each group into one row (ungrouped requests alone)."""
    groups: dict[Any, list[tuple[int, list[int], list[int]]]] = {}
    for i, req in enumerate(requests):
        ids, scored = encode_request(tokenizer, req, bos_id)
        key = ("g", req.group) if req.group is not None else ("r", i)
        groups.setdefault(key, []).append((i, ids, scored))
    return [pack_group(members) for members in groups.values()]


def plan_batches(rows: list[PackedRow], batch_size: int, max_tokens: int) -> list[list[PackedRow]]:
    """Rows sorted longest first, cut into batches of <= batch_size rows and <= max_tokens padded
    tokens (a row longer than max_tokens goes alone)."""
    order = sorted(rows, key=lambda r: len(r.ids), reverse=True)
    batches: list[list[PackedRow]] = []
    for row in order:
        if batches:
            last = batches[-1]
            width = len(last[0].ids)
            if len(last) < batch_size and (len(last) + 1) * width <= max_tokens:
                last.append(row)
                continue
        batches.append([row])
    return batches


def _batch_tensors(batch: list[PackedRow], pad_id: int, dtype: Any) -> tuple[Any, Any, Any]:
    """input ids, position ids and the additive (B, 1, T, T) ancestor mask of one batch."""
    import numpy as np
    import torch

    width = len(batch[0].ids)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    pos = np.ones((len(batch), width), dtype=np.int64)
    allowed = np.zeros((len(batch), width, width), dtype=bool)
    for b, row in enumerate(batch):
        n = len(row.ids)
        ids[b, :n] = row.ids
        pos[b, :n] = row.positions
        allowed[b, 0, 0] = True
        for i in range(1, n):  # a node sees what its parent sees, and itself
            allowed[b, i] = allowed[b, row.parents[i]]
            allowed[b, i, i] = True
        # padding attends to BOS and itself, so no softmax row is empty (its output is unused)
        allowed[b, n:, 0] = True
        allowed[b, np.arange(n, width), np.arange(n, width)] = True
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(torch.from_numpy(~allowed), torch.finfo(dtype).min)
    return torch.from_numpy(ids), torch.from_numpy(pos), mask[:, None]


def target_logprobs(head: Any, hidden: Any, targets: Any, max_elements: int) -> Any:
    """log softmax(head(hidden))[target] per row, in fp32, over row chunks of the output head so
    that at most `max_elements` logits exist at once (hidden holds the scored positions only)."""
    import torch

    vocab = head.weight.shape[0]
    step = max(1, max_elements // vocab)
    out = []
    for s in range(0, hidden.shape[0], step):
        # log-softmax of a bounded chunk (one fused pass, cache-resident), then the targets only
        logp = torch.log_softmax(head(hidden[s:s + step]).float(), dim=-1)
        out.append(logp.gather(1, targets[s:s + step, None]).squeeze(1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _to_device(x: Any, device: str) -> Any:
    """Copy a host tensor to `device` without making the host wait (pinned, non-blocking on GPU),
    so the next batch is prepared while the device still computes."""
    if device == "cpu":
        return x
    return x.pin_memory().to(device, non_blocking=True)


def _head_budget(device: str) -> int:
    """Logit elements alive at once: small on CPU (cache-friendly), large on GPU."""
    return 1 << 21 if device == "cpu" else 1 << 26


def score_candidates(model: Any, tokenizer: Any, requests: list[ScoreRequest], *,
                     batch_size: int = 64, device: str = "cpu") -> list[float]:
    """log P(continuation | BOS + context) of each request: the SUM of the log-probs (nats) of
    the tokens covering the continuation, no length normalisation. Same order as `requests`."""
    import torch

    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise ValueError("tokenizer has no bos_token; scoring prepends BOS (set bos_token, e.g. <s>)")
    if not requests:
        return []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos_id
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    rows = pack_requests(tokenizer, requests, bos_id)
    scores = torch.zeros(len(requests), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for batch in plan_batches(rows, batch_size, max_tokens=batch_size * 128):
            ids, pos, mask = _batch_tensors(batch, pad_id, dtype)
            width = ids.shape[1]
            flat, targets, req_idx, pair_idx = [], [], [], []
            for b, row in enumerate(batch):
                offset = len(flat)
                flat.extend(b * width + node for node, _ in row.pairs)
                targets.extend(tok for _, tok in row.pairs)
                req_idx.extend(r for r, _ in row.members)
                pair_idx.extend(offset + p for _, p in row.members)
            flat_t, tgt_t, req_t, pair_t = (_to_device(torch.tensor(x), device)
                                            for x in (flat, targets, req_idx, pair_idx))
            hidden = base(input_ids=_to_device(ids, device), use_cache=False,
                          attention_mask=_to_device(mask, device),
                          position_ids=_to_device(pos, device)).last_hidden_state
            sel = hidden.reshape(-1, hidden.shape[-1])[flat_t]
            lp = target_logprobs(head, sel, tgt_t, _head_budget(device))
            scores.index_add_(0, req_t, lp[pair_t])
    return scores.cpu().tolist()


def block_losses(model: Any, blocks: Any, *, batch_size: int = 8, device: str = "cpu") -> list[float]:
    """Mean next-token cross-entropy (nats) of each row of `blocks` (n_blocks x L token ids):
    the L-1 tokens after the first, given everything before them in the block."""
    import torch

    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for s in range(0, blocks.shape[0], batch_size):
            ids = blocks[s:s + batch_size].to(device)
            hidden = base(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
            flat = hidden.reshape(-1, hidden.shape[-1])
            lp = target_logprobs(head, flat, ids[:, 1:].reshape(-1), _head_budget(device))
            out.append(-lp.view(ids.shape[0], -1).mean(dim=1))
    return torch.cat(out).cpu().tolist() if out else []


def load_model(model_dir: Path, device: str) -> tuple[Any, Any]:
    """An HF causal LM directory and its tokenizer: bf16 on GPU, fp32 on CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r}: allowed are cpu, cuda, cuda:N")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer

"""The scoring engine: log P(continuation | BOS + context) for many requests, fast and exact.

Every request is tokenized as one string (context + continuation, BOS first) and scored on the
tokens whose character span ends inside the continuation, as the BabyLM 2025 pipeline does
(`phrase_mask`: offset end > len(context)). The sum of those token log-probs is the score.

Why it is fast, with the same numbers as one-string-at-a-time scoring:
- all requests are tokenized in one call, sorted by token ids and merged, neighbour by neighbour,
  into token tries of a bounded size (`row_tokens`): each trie is one packed row, so every shared
  prefix (the BOS, a BLiMP pair's common start, an EWoK or entity-tracking context, the earlier
  words of a reading text, and whatever prefixes different items happen to share) runs once; each
  token attends to its ancestors only and its RoPE position is its depth, so every branch sees
  exactly what it would see alone;
- rows are sorted by length and batched, so padding is small;
- the output head runs once per distinct predicting token (a branch point predicts all of its
  children from one row of logits), in bounded row chunks normalised in fp32 and gathered at the
  targets: no B x T x V logits or log-softmax are ever materialised;
- scores are accumulated on the device and copied to the host once.
torch is imported inside functions so `import cdhpc.evals.engine` stays cheap.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROW_TOKENS = 64  # trie nodes per packed row before a new row starts (one sequence may exceed it)


@dataclass(frozen=True)
class ScoreRequest:
    """One candidate: the text it is conditioned on and the text it scores."""

    context: str
    continuation: str


@dataclass
class PackedRow:
    """A token trie: node ids, RoPE positions (depth), parent nodes (a parent comes before its
    children); the unique (predictor node, target id) pairs; the (request, pair) members whose
    sums they make. Flat int lists (no tuples), so building millions stays cheap."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    pair_nodes: list[int] = field(default_factory=list)
    pair_targets: list[int] = field(default_factory=list)
    member_requests: list[int] = field(default_factory=list)
    member_pairs: list[int] = field(default_factory=list)
    children: dict[int, int] = field(default_factory=dict, repr=False)  # key(parent, tok) -> node
    pair_index: dict[int, int] = field(default_factory=dict, repr=False)  # key(node, tok) -> pair


def _key(node: int, tok: int) -> int:
    """One int for a (node, token id) pair (token ids are < 2**32)."""
    return (node << 32) | tok


def encode_requests(tokenizer: Any, requests: list[ScoreRequest],
                    bos_id: int) -> list[tuple[list[int], list[int]]]:
    """Per request: token ids of BOS + context + continuation (one tokenizer call for all) and the
    indices (>= 1) of the scored tokens."""
    enc = tokenizer([r.context + r.continuation for r in requests], add_special_tokens=False,
                    return_offsets_mapping=True)
    out = []
    for req, ids, offsets in zip(requests, enc["input_ids"], enc["offset_mapping"]):
        start = len(req.context)
        out.append(([bos_id] + list(ids), [j + 1 for j, (_, end) in enumerate(offsets) if end > start]))
    return out


def _path(ids: list[int], scored: list[int]) -> list[int]:
    """The tokens that need a hidden state: those that condition a scored token (the BOS first)."""
    return ids[:max(scored, default=1)]


def _new_nodes(row: PackedRow, path: list[int]) -> int:
    """How many nodes `path` would add to `row`."""
    node = 0
    for depth, tok in enumerate(path[1:], start=1):
        node = row.children.get(_key(node, tok), -1)
        if node < 0:
            return len(path) - depth
    return 0


def _insert(row: PackedRow, req_index: int, ids: list[int], scored: list[int]) -> None:
    """Add one request's path to the trie and register its scored (node, target) pairs."""
    nodes = [0]
    for depth, tok in enumerate(_path(ids, scored)[1:], start=1):
        parent = nodes[-1]
        node = row.children.get(_key(parent, tok))
        if node is None:
            node = row.children[_key(parent, tok)] = len(row.ids)
            row.ids.append(tok)
            row.positions.append(depth)
            row.parents.append(parent)
        nodes.append(node)
    for j in scored:
        key = _key(nodes[j - 1], ids[j])
        pair = row.pair_index.get(key)
        if pair is None:
            pair = row.pair_index[key] = len(row.pair_nodes)
            row.pair_nodes.append(nodes[j - 1])
            row.pair_targets.append(ids[j])
        row.member_requests.append(req_index)
        row.member_pairs.append(pair)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a burst of small lists is built: with a loaded
    transformers in the process a full collection walks ~400k objects (0.1-0.2 s) and would run
    several times; nothing built here forms a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def pack_requests(tokenizer: Any, requests: list[ScoreRequest], bos_id: int,
                  row_tokens: int = ROW_TOKENS) -> list[PackedRow]:
    """Encode every request and merge them, in token-id order (so shared prefixes are neighbours),
    into tries of at most `row_tokens` nodes (a longer single request gets a row of its own)."""
    with _gc_paused():
        encoded = encode_requests(tokenizer, requests, bos_id)
        order = sorted(range(len(encoded)), key=lambda i: encoded[i][0])
        rows: list[PackedRow] = []
        row = None
        for i in order:
            ids, scored = encoded[i]
            if row is None or len(row.ids) + _new_nodes(row, _path(ids, scored)) > row_tokens:
                row = PackedRow(ids=[bos_id], positions=[0], parents=[0])
                rows.append(row)
            _insert(row, i, ids, scored)
    return rows


def plan_batches(rows: list[PackedRow], batch_size: int,
                 row_tokens: int = ROW_TOKENS) -> list[list[PackedRow]]:
    """Rows sorted longest first, cut into batches of <= batch_size rows and <= 2 x batch_size x
    row_tokens padded tokens (a row longer than that goes alone)."""
    max_tokens = 2 * batch_size * row_tokens
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


@dataclass
class HeadPlan:
    """Which hidden rows the output head runs on and which logits each pair reads, planned on the
    host: `rows` (flat positions, ascending, unique), per pair its index into `rows` (ascending)
    and target id, and the chunk cuts (row start, first pair) that bound the logits alive."""

    rows: Any
    pair_row: Any
    pair_target: Any
    cuts: list[tuple[int, int]]


def plan_head(positions: Any, targets: Any, vocab: int, max_elements: int) -> tuple[HeadPlan, Any]:
    """A HeadPlan for pairs (flat position, target) and the permutation that orders the pairs."""
    import numpy as np

    positions, targets = np.asarray(positions, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    rows, pair_row = np.unique(positions, return_inverse=True)
    order = np.argsort(pair_row, kind="stable")
    pair_row = pair_row[order]
    step = max(1, max_elements // vocab)
    starts = np.arange(0, len(rows), step)
    cuts = list(zip(starts.tolist(), np.searchsorted(pair_row, starts).tolist()))
    return HeadPlan(rows, pair_row, targets[order], cuts), order


def head_logprobs(head: Any, hidden: Any, plan: HeadPlan, device: str) -> Any:
    """log softmax(head(hidden[plan.rows[r]]))[target] for every planned pair (in plan order), in
    fp32, one head row per distinct position and at most one chunk of logits alive at a time."""
    import torch

    sel = hidden[_to_device(torch.from_numpy(plan.rows), device)]
    pair_row = _to_device(torch.from_numpy(plan.pair_row), device)
    pair_target = _to_device(torch.from_numpy(plan.pair_target), device)
    bounds = plan.cuts + [(len(plan.rows), len(plan.pair_row))]
    out = []
    for (s, lo), (e, hi) in zip(bounds, bounds[1:]):
        # one fused log-softmax pass per row of a bounded chunk (cache-resident), then the targets
        logp = torch.log_softmax(head(sel[s:e]).float(), dim=-1)
        out.append(logp[pair_row[lo:hi] - s, pair_target[lo:hi]])
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _to_device(x: Any, device: str) -> Any:
    """Copy a host tensor to `device` without making the host wait (pinned, non-blocking on GPU),
    so the next batch is prepared while the device still computes."""
    if device == "cpu":
        return x
    return x.pin_memory().to(device, non_blocking=True)


def _head_budget(device: str) -> int:
    """Logit elements alive at once: small on CPU (cache-friendly), large on GPU."""
    return 1 << 20 if device == "cpu" else 1 << 26


def score_candidates(model: Any, tokenizer: Any, requests: list[ScoreRequest], *,
                     batch_size: int = 64, device: str = "cpu",
                     row_tokens: int = ROW_TOKENS) -> list[float]:
    """log P(continuation | BOS + context) of each request: the SUM of the log-probs (nats) of
    the tokens covering the continuation, no length normalisation. Same order as `requests`.
    `batch_size` is in packed rows (of about `row_tokens` tokens each)."""
    import numpy as np
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
    rows = pack_requests(tokenizer, requests, bos_id, row_tokens)
    scores = torch.zeros(len(requests), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for batch in plan_batches(rows, batch_size, row_tokens):
            ids, pos, mask = _batch_tensors(batch, pad_id, dtype)
            width = ids.shape[1]
            flat, targets, req_idx, pair_idx = [], [], [], []
            for b, row in enumerate(batch):
                offset = len(flat)
                flat.extend(b * width + node for node in row.pair_nodes)
                targets.extend(row.pair_targets)
                req_idx.extend(row.member_requests)
                pair_idx.extend(offset + p for p in row.member_pairs)
            plan, order = plan_head(flat, targets, head.weight.shape[0], _head_budget(device))
            # member -> its pair's place in plan order
            where = np.empty(len(order), dtype=np.int64)
            where[order] = np.arange(len(order))
            req_t = _to_device(torch.tensor(req_idx), device)
            pair_t = _to_device(torch.from_numpy(where[np.asarray(pair_idx, dtype=np.int64)]), device)
            hidden = base(input_ids=_to_device(ids, device), use_cache=False,
                          attention_mask=_to_device(mask, device),
                          position_ids=_to_device(pos, device)).last_hidden_state
            lp = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), plan, device)
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
            rows = blocks[s:s + batch_size]
            targets = rows[:, 1:].reshape(-1).numpy()
            plan, _ = plan_head(range(len(targets)), targets, head.weight.shape[0], _head_budget(device))
            hidden = base(input_ids=_to_device(rows, device), use_cache=False).last_hidden_state[:, :-1]
            lp = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), plan, device)
            out.append(-lp.view(rows.shape[0], -1).mean(dim=1))
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

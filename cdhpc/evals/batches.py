"""Prepared batches: packed token tries (cdhpc.evals.packing.pack_sequences) turned, once, into
everything the model needs per batch, as flat numpy arrays, and the loop that scores them.

The host work of a task (tokenizer call, sort, tries, batch plan, subtree ends, head plan) depends
on the data, the tokenizer and the packing options only, never on the weights, so a sweep does it
once and every checkpoint that shares the tokenizer scores the same `PreparedPack`
(cdhpc.evals.packcache stores it on disk). What is left per checkpoint is the model's work and
little else: the ancestor mask is built on the device from each node's subtree end (B x T
integers copied instead of a B x T x T float mask). torch is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdhpc.evals.packing import ROW_TOKENS, PackedRow, pack_sequences

SEGMENTS = ("tokens", "head_rows", "pairs", "members")
"""The four per-batch segments of a PreparedPack's arrays, in the columns of its `cuts`."""


def plan_batches(
    rows: list[PackedRow], batch_size: int, row_tokens: int = ROW_TOKENS
) -> list[list[PackedRow]]:
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


@dataclass
class PreparedPack:
    """Every batch of a set of scored token sequences, ready for the model. Per batch k (rows B,
    width T: `shapes[k]`), the slices `cuts[k]:cuts[k + 1]` of each segment (columns: SEGMENTS):
    tokens: `ids`, `depths` (RoPE positions) and `ends` (the first position after each node's
    subtree; padding ends itself), B x T each, row-major, padding id 0 at depth 0; head_rows: the
    flat positions (b * T + t, ascending, unique) the output head runs on; pairs: per (predictor,
    target) pair, in head order, its index into head_rows and its target id; members: per
    (request, pair) member, the request it adds to and its pair. int32 arrays; `n_requests`
    scores come out; `meta` is JSON data the builder keeps with it (e.g. what was truncated)."""

    n_requests: int
    shapes: Any
    cuts: Any
    ids: Any
    depths: Any
    ends: Any
    head_rows: Any
    pair_row: Any
    pair_target: Any
    member_req: Any
    member_pair: Any
    meta: dict

    ARRAYS = (
        "shapes",
        "cuts",
        "ids",
        "depths",
        "ends",
        "head_rows",
        "pair_row",
        "pair_target",
        "member_req",
        "member_pair",
    )

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS)

    def check(self) -> None:
        """ValueError when the arrays do not describe batches the scorer can run (a cache file
        that was altered but still reads): every index in range, every slice consistent."""
        import numpy as np

        n = len(self.shapes)
        if self.shapes.shape != (n, 2) or self.cuts.shape != (n + 1, 4) or (self.cuts[0] != 0).any():
            raise ValueError("batch table shapes do not match")
        sizes = (len(self.ids), len(self.head_rows), len(self.pair_row), len(self.member_req))
        if (np.diff(self.cuts, axis=0) < 0).any() or tuple(self.cuts[-1]) != sizes:
            raise ValueError("segment cuts are not increasing or do not end at the array sizes")
        if (
            len(self.depths) != sizes[0]
            or len(self.ends) != sizes[0]
            or len(self.pair_target) != sizes[2]
            or len(self.member_pair) != sizes[3]
        ):
            raise ValueError("arrays of one segment differ in length")
        if not (np.diff(self.cuts[:, 0]) == self.shapes.prod(axis=1)).all():
            raise ValueError("token segments do not match the batch shapes")
        for k in range(n):
            b = self.batch_slices(k)
            width = int(self.shapes[k, 1])
            if not (
                _within(b["ends"], 1, width + 1)
                and _within(b["depths"], 0, width)
                and _within(b["ids"], 0, None)
                and _within(b["head_rows"], 0, len(b["ids"]))
                and _within(b["pair_row"], 0, len(b["head_rows"]))
                and _within(b["pair_target"], 0, None)
                and _within(b["member_req"], 0, self.n_requests)
                and _within(b["member_pair"], 0, len(b["pair_row"]))
            ):
                raise ValueError(f"batch {k}: an index is out of range")

    def batch_slices(self, k: int) -> dict[str, Any]:
        """Batch k's slice of every per-batch array (views)."""
        out = {}
        for seg, names in zip(
            range(4),
            (
                ("ids", "depths", "ends"),
                ("head_rows",),
                ("pair_row", "pair_target"),
                ("member_req", "member_pair"),
            ),
        ):
            lo, hi = int(self.cuts[k, seg]), int(self.cuts[k + 1, seg])
            out.update({name: getattr(self, name)[lo:hi] for name in names})
        return out

    def arrays(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.ARRAYS}


def _within(a: Any, lo: int, hi: int | None) -> bool:
    """Every element of `a` in [lo, hi) (hi None: no upper bound); True for an empty array."""
    return not len(a) or (int(a.min()) >= lo and (hi is None or int(a.max()) < hi))


def subtree_ends(depth: Any) -> Any:
    """(B x T) first position after each node's subtree in depth-first order: the first later node
    no deeper than it (T when none). A root at depth 0 ends the previous tree, so a row may hold a
    forest; padding (depth 0) ends every subtree and itself right away."""
    import numpy as np

    width = depth.shape[1]
    t = np.arange(width)
    later = (t[None, None, :] > t[None, :, None]) & (depth[:, None, :] <= depth[:, :, None])  # [b, i, j]
    return np.where(later.any(axis=2), later.argmax(axis=2), width)


def _batch_arrays(batch: list[PackedRow]) -> dict[str, Any]:
    """One batch's per-segment arrays (see PreparedPack)."""
    import numpy as np

    width = len(batch[0].ids)
    ids = np.zeros((len(batch), width), dtype=np.int64)  # padding sees only itself: any id
    depth = np.zeros((len(batch), width), dtype=np.int64)
    for b, row in enumerate(batch):
        ids[b, : len(row.ids)] = row.ids
        depth[b, : len(row.ids)] = row.depths
    pair_base = np.cumsum([0] + [len(r.pair_nodes) for r in batch[:-1]])
    flat = np.concatenate([b * width + r.pair_nodes for b, r in enumerate(batch)])
    targets = np.concatenate([r.pair_targets for r in batch])
    head_rows, pair_row = np.unique(flat, return_inverse=True)
    order = np.argsort(pair_row, kind="stable")  # pairs grouped by head row, for bounded chunks
    where = np.empty(len(order), dtype=np.int64)  # pair -> its place in head order
    where[order] = np.arange(len(order))
    pair_idx = np.concatenate([base + r.member_pairs for base, r in zip(pair_base, batch)])
    return {
        "ids": ids.ravel(),
        "depths": depth.ravel(),
        "ends": subtree_ends(depth).ravel(),
        "head_rows": head_rows,
        "pair_row": pair_row[order],
        "pair_target": targets[order],
        "member_req": np.concatenate([r.member_requests for r in batch]),
        "member_pair": where[pair_idx],
    }


def prepare_pack(
    full: Any, scored: Any, batch_size: int = 64, row_tokens: int = ROW_TOKENS, meta: dict | None = None
) -> PreparedPack:
    """Pack token sequences ((n x width) ids, -1 past each end; the scored mask) into tries
    (`pack_sequences`), plan the batches and prepare each (see PreparedPack)."""
    import numpy as np

    batches = plan_batches(pack_sequences(full, scored, row_tokens), batch_size, row_tokens)
    parts = [_batch_arrays(b) for b in batches]
    flat = {
        name: np.concatenate([p[name] for p in parts]).astype(np.int32)
        if parts
        else np.zeros(0, dtype=np.int32)
        for name in PreparedPack.ARRAYS[2:]
    }
    sizes = np.array(
        [[len(p["ids"]), len(p["head_rows"]), len(p["pair_row"]), len(p["member_req"])] for p in parts],
        dtype=np.int64,
    ).reshape(-1, 4)
    cuts = np.vstack([np.zeros((1, 4), dtype=np.int64), np.cumsum(sizes, axis=0)])
    shapes = np.array([[len(b), len(b[0].ids)] for b in batches], dtype=np.int64).reshape(-1, 2)
    return PreparedPack(n_requests=len(full), shapes=shapes, cuts=cuts, meta=dict(meta or {}), **flat)


@dataclass
class HeadPlan:
    """Which hidden rows the output head runs on and which logits each pair reads, planned on the
    host: `rows` (flat positions, ascending, unique), per pair its index into `rows` (ascending)
    and target id, and the chunk cuts (row start, first pair) that bound the logits alive."""

    rows: Any
    pair_row: Any
    pair_target: Any
    cuts: list[tuple[int, int]]


def head_cuts(n_rows: int, pair_row: Any, vocab: int, max_elements: int) -> list[tuple[int, int]]:
    """Chunk starts (row, first pair) so that at most `max_elements` logits are alive at once."""
    import numpy as np

    starts = np.arange(0, n_rows, max(1, max_elements // vocab))
    return list(zip(starts.tolist(), np.searchsorted(pair_row, starts).tolist()))


def plan_head(positions: Any, targets: Any, vocab: int, max_elements: int) -> tuple[HeadPlan, Any]:
    """A HeadPlan for pairs (flat position, target) and the permutation that orders the pairs."""
    import numpy as np

    positions, targets = np.asarray(positions, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    rows, pair_row = np.unique(positions, return_inverse=True)
    order = np.argsort(pair_row, kind="stable")
    pair_row = pair_row[order]
    return HeadPlan(
        rows, pair_row, targets[order], head_cuts(len(rows), pair_row, vocab, max_elements)
    ), order


def head_logprobs(head: Any, hidden: Any, plan: HeadPlan, device: str) -> Any:
    """log softmax(head(hidden[plan.rows[r]]))[target] for every planned pair (in plan order), in
    fp32, one head row per distinct position and at most one chunk of logits alive at a time."""
    import torch

    sel = hidden[_on_device(plan.rows, device)]
    pair_row, pair_target = _on_device(plan.pair_row, device), _on_device(plan.pair_target, device)
    bounds = plan.cuts + [(len(plan.rows), len(plan.pair_row))]
    out = []
    for (s, lo), (e, hi) in zip(bounds, bounds[1:]):
        # one fused log-softmax pass per row of a bounded chunk (cache-resident), then the targets;
        # the upcast comes first so a bf16 model's log-probs are normalised in fp32. On the CPU in
        # place: a fresh 16 MB output per chunk costs page faults (the softmax took twice as long);
        # a GPU's caching allocator reuses its blocks
        logits = head(sel[s:e]).float()
        logp = torch.log_softmax(logits, dim=-1, out=logits if logits.is_cpu else None)
        out.append(logp[pair_row[lo:hi] - s, pair_target[lo:hi]])
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _on_device(x: Any, device: str) -> Any:
    """A numpy index array as a tensor on `device`; a tensor (already placed) as it is."""
    import torch

    return x if isinstance(x, torch.Tensor) else to_device(torch.from_numpy(x), device)


def to_device(x: Any, device: str) -> Any:
    """Copy a host tensor to `device` without making the host wait (pinned, non-blocking on GPU),
    so the next batch is prepared while the device still computes."""
    if device == "cpu":
        return x
    return x.pin_memory().to(device, non_blocking=True)


def head_budget(device: str) -> int:
    """Logit elements alive at once (16 MB of fp32 on CPU: in an interleaved measurement, 4M
    beat 1M by 1.6x on the head, larger chunks were slower again); large on GPU."""
    return 1 << 22 if device == "cpu" else 1 << 26


@dataclass
class DeviceBatch:
    """One batch's tensors on the device, and its head plan (indices on the device too)."""

    ids: Any
    positions: Any
    ends: Any
    plan: HeadPlan
    member_req: Any
    member_pair: Any


def _device_batch(pack: PreparedPack, k: int, vocab: int, device: str) -> DeviceBatch:
    import torch

    b = pack.batch_slices(k)
    shape = tuple(int(x) for x in pack.shapes[k])

    def tensor(a: Any, shaped: bool = False) -> Any:
        t = torch.from_numpy(a.astype("int64"))
        return to_device(t.view(shape) if shaped else t, device)

    pair_row = b["pair_row"].astype("int64")
    plan = HeadPlan(
        tensor(b["head_rows"]),
        to_device(torch.from_numpy(pair_row), device),
        tensor(b["pair_target"]),
        head_cuts(len(b["head_rows"]), pair_row, vocab, head_budget(device)),
    )
    return DeviceBatch(
        tensor(b["ids"], True),
        tensor(b["depths"], True),
        tensor(b["ends"], True),
        plan,
        tensor(b["member_req"]),
        tensor(b["member_pair"]),
    )


def ancestor_mask(ends: Any, dtype: Any) -> Any:
    """The additive (B, 1, T, T) mask: query j sees key i when i <= j < ends[i] (i is j's ancestor
    or j itself), 0 there and the dtype's lowest value elsewhere; built where `ends` lives."""
    import torch

    t = torch.arange(ends.shape[1], device=ends.device)
    allowed = (t[None, None, :] <= t[None, :, None]) & (t[None, :, None] < ends[:, None, :])  # [b, j, i]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ends.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def score_pack(model: Any, pack: PreparedPack, device: str = "cpu") -> list[float]:
    """Sum of the log-probs (nats) of the scored tokens of each sequence of `pack`, in the order
    of the sequences it was prepared from. Nothing in the loop waits for the device (copies are
    non-blocking, the scores stay there until the end), so on a GPU the host makes the next
    batch's tensors while the device computes the current one; a background thread for that
    measured no gain on the CPU (docs/evaluation.md) and is not used."""
    import torch

    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    vocab = head.weight.shape[0]
    scores = torch.zeros(pack.n_requests, dtype=torch.float32, device=device)
    with torch.inference_mode():
        for d in (_device_batch(pack, k, vocab, device) for k in range(len(pack.shapes))):
            hidden = base(
                input_ids=d.ids,
                use_cache=False,
                attention_mask=ancestor_mask(d.ends, dtype),
                position_ids=d.positions,
            ).last_hidden_state
            lp = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), d.plan, device)
            scores.index_add_(0, d.member_req, lp[d.member_pair])
    return scores.cpu().tolist()

"""Packing: token sequences merged into token tries of a bounded size, one trie (a forest when
sequences start with different tokens) per packed row, so every shared prefix runs once
(docs/evaluation.md). Host-side numpy only: cdhpc.evals.engine packs its requests with it, and
cdhpc.evals.batches turns the rows into device batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROW_TOKENS = 64  # trie nodes per packed row before a new row starts (one sequence may exceed it)


@dataclass
class PackedRow:
    """A token trie in depth-first order (a node's subtree follows it contiguously): node token
    ids and depths (= RoPE positions, the BOS at 0); the unique (predictor node, target id)
    pairs; the (request, pair) members whose sums make the scores. numpy int64 arrays."""

    ids: Any
    depths: Any
    pair_nodes: Any
    pair_targets: Any
    member_requests: Any
    member_pairs: Any


def _row_starts(lengths: Any, shared: Any, row_tokens: int) -> Any:
    """Greedy cut of the sorted paths into rows: a path joins the current row while the row stays
    within row_tokens nodes or within the path's own length (so the growing prefixes of a long
    reading text stay one chain however long). True where a path opens a new row."""
    import numpy as np

    starts = np.zeros(len(lengths), dtype=bool)
    size = row_tokens + 1
    for k, (m, s) in enumerate(zip(lengths.tolist(), shared.tolist())):
        if size + m - s > max(row_tokens, m):
            starts[k], size = True, m
        else:
            size += m - s
    return starts


def pack_sequences(full: Any, scored: Any, row_tokens: int = ROW_TOKENS) -> list[PackedRow]:
    """Merge token sequences ((n x width) ids, -1 past each end; the scored mask) into tries of
    about `row_tokens` nodes; a sequence with nothing scored is left out (its score is 0). A
    sequence's path is the tokens that condition a scored token. Paths are sorted, so the nodes a
    path shares with any earlier path of its row are those it shares with the previous path
    (sorted strings: LCP(i, k) <= LCP(k-1, k) for i < k), and the nodes come out in depth-first
    order; the build is array arithmetic on the (paths x depth) grid. Member request indices
    refer to the rows of `full`."""
    import numpy as np

    keep = np.flatnonzero(scored.any(axis=1))
    if not len(keep):
        return []
    full, scored = full[keep], scored[keep]
    n, width = full.shape
    # path length: up to the last scored token (exclusive)
    lengths = width - 1 - scored[:, ::-1].argmax(axis=1)
    depth = np.arange(width)
    path = np.where(depth[None, :] < lengths[:, None], full, -1)
    order = np.lexsort(path.T[::-1])  # lexicographic, a prefix before its extensions
    full, scored, lengths, path = full[order], scored[order], lengths[order], path[order]
    same = np.zeros((n, width + 1), dtype=bool)
    same[1:, :width] = (path[1:] == path[:-1]) & (path[1:] >= 0)
    shared = np.argmin(same, axis=1)  # leading nodes shared with the previous path
    starts = _row_starts(lengths, shared, row_tokens)
    shared[starts] = 0  # a new row shares nothing, not even a BOS
    created = (depth[None, :] >= shared[:, None]) & (depth[None, :] < lengths[:, None])
    node = np.cumsum(created.ravel()).reshape(n, width) - 1  # node ids in creation order
    node = np.maximum.accumulate(np.where(created, node, -1), axis=0)  # shared: from the path above
    # a pair: scored position j, predicted by the path's node at depth j - 1
    pk, pj = np.nonzero(scored)
    span = int(full.max()) + 1
    pair_key, member_pair = np.unique(node[pk, pj - 1] * span + full[pk, pj], return_inverse=True)
    pair_node, pair_target = np.divmod(pair_key, span)
    node_ids = full[created]
    node_depths = np.broadcast_to(depth, (n, width))[created]
    node_cut = np.append(node[starts, 0], len(node_ids))  # each row's first root, then the end
    pair_cut = np.searchsorted(pair_node, node_cut)
    by_pair = np.argsort(member_pair, kind="stable")
    member_pair, member_req = member_pair[by_pair], keep[order[pk[by_pair]]]
    member_cut = np.searchsorted(member_pair, pair_cut)
    return [
        PackedRow(
            node_ids[n0:n1],
            node_depths[n0:n1],
            pair_node[p0:p1] - n0,
            pair_target[p0:p1],
            member_req[m0:m1],
            member_pair[m0:m1] - p0,
        )
        for n0, n1, p0, p1, m0, m1 in zip(
            node_cut, node_cut[1:], pair_cut, pair_cut[1:], member_cut, member_cut[1:]
        )
    ]

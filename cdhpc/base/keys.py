"""Keys and seeds: the one canonical JSON that plan keys are hashed from (``cdhpc.sweep.plan.content_key``)
and ``derive_seed``, the seed of every random choice derived from the sweep seed (docs/design.md §9)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """The one serialisation keys are hashed from: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (e.g. sweep seed, method, shard index)."""
    return int(hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:16], 16) >> 1

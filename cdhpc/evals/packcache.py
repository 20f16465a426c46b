"""The pack cache: a task's prepared batches (cdhpc.evals.batches.PreparedPack) kept on disk and in
memory, so the host work of an evaluation is done once per sweep instead of once per checkpoint.

A pack depends on the data, the tokenizer and the packing options only, so its key is the hash of
exactly those (`pack_fields`): the task and its version, the data checksum, the hash of the
tokenizer files' bytes (and the tokenizers / transformers versions that read them), the scoring
rule, the model's context (max_tokens), truncate, the batch geometry and the pack format. Every
checkpoint of a sweep that shares the tokenizer meets the same key.

On disk a pack is `<dir>/<key>.npz` (in a sweep: `<workdir>/cache/evalpack/`), written atomically
(cdhpc.sweep.receipts), so a reader sees a whole file or none; the file holds its own key fields, and a
file that does not read, whose key differs or whose arrays do not check is logged, rebuilt and
replaced, never used. In memory, packs of this process are kept up to MEMO_BYTES, so an evaluate
job that scores several checkpoints (or aoa, a run's checkpoints in one step) loads each once; the
task's parsed data files are kept too (`memo_data`, keyed by their checksum), so such a job reads
and hashes them per checkpoint but parses them once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from cdhpc.evals.batches import PreparedPack
from cdhpc.evals.packing import ROW_TOKENS

log = logging.getLogger("cdhpc")

FORMAT = 1
"""Version of the pack layout and of the host work that makes it; bump it when either changes."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
MEMO_BYTES = 1 << 30
"""Bytes of packs one process keeps in memory (full BLiMP's pack is about 60 MB)."""

DATA_MEMO_ENTRIES = 8
"""Parsed data sets one process keeps (full BLiMP's items are about 100 MB of Python objects)."""

_memo: OrderedDict[str, PreparedPack] = OrderedDict()
_data_memo: OrderedDict[tuple, Any] = OrderedDict()


def tokenizer_hash(folder: Path) -> str | None:
    """sha256 over the names and bytes of the tokenizer files in `folder`; None when it has none
    (then nothing identifies the tokenizer, and nothing is cached)."""
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
            found = True
    return h.hexdigest() if found else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def pack_fields(
    base: dict[str, Any], model_dir: Path, max_tokens: int | None, row_tokens: int
) -> dict[str, Any] | None:
    """The key fields of one pack: `base` (task, version, data_sha256, scoring, truncate,
    batch_size) plus the tokenizer's identity, the context and the row size; None when the
    tokenizer files cannot be identified."""
    tok = tokenizer_hash(model_dir)
    if tok is None:
        return None
    return {
        **base,
        "format": FORMAT,
        "tokenizer_sha256": tok,
        "tokenizers": _version("tokenizers"),
        "transformers": _version("transformers"),
        "max_tokens": max_tokens,
        "row_tokens": row_tokens,
    }


def pack_key(key_fields: dict[str, Any]) -> str:
    """The file name stem of a pack: sha256 of its key fields as canonical JSON (40 hex)."""
    return hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:40]


def _to_bytes(pack: PreparedPack, key_fields: dict[str, Any]) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    text = {"key": json.dumps(key_fields, sort_keys=True), "meta": json.dumps(pack.meta, sort_keys=True)}
    np.savez(
        buf,
        n_requests=np.int64(pack.n_requests),
        **pack.arrays(),
        **{k: np.frombuffer(v.encode(), dtype=np.uint8) for k, v in text.items()},
    )
    return buf.getvalue()


def read_pack(path: Path, key_fields: dict[str, Any]) -> PreparedPack | None:
    """The pack in `path` when it reads whole, was made for exactly `key_fields` and checks;
    None (and a log line saying why, unless the file does not exist) otherwise."""
    import zipfile

    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(z["key"].tobytes())
            if stored != json.loads(json.dumps(key_fields)):
                log.warning("pack cache %s: made for other key fields; rebuilt", path)
                return None
            pack = PreparedPack(
                n_requests=int(z["n_requests"]),
                meta=json.loads(z["meta"].tobytes()),
                **{name: z[name] for name in PreparedPack.ARRAYS},
            )
        if any(a.dtype.kind != "i" for a in pack.arrays().values()):
            raise ValueError("arrays are not integer")
        pack.check()
        return pack
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        log.warning("pack cache %s: unreadable (%s: %s); rebuilt", path, type(err).__name__, err)
        return None


def _remember(key: str, pack: PreparedPack) -> None:
    _memo[key] = pack
    _memo.move_to_end(key)
    while _memo and sum(p.nbytes for p in _memo.values()) > MEMO_BYTES:
        _memo.popitem(last=False)


def clear_memo() -> None:
    """Forget the packs and parsed data kept in memory (benchmarks measuring a cold process)."""
    _memo.clear()
    _data_memo.clear()


def memo_data(key: tuple, parse: Callable[[], Any]) -> Any:
    """`parse()`'s result for `key` (task, task version, sha256 of the data files' bytes, their
    paths), from this process's memory when the same files were parsed before: the parse depends
    on those only, so the result is the same. Callers treat it as read-only."""
    if key in _data_memo:
        _data_memo.move_to_end(key)
        return _data_memo[key]
    value = _data_memo[key] = parse()
    while len(_data_memo) > DATA_MEMO_ENTRIES:
        _data_memo.popitem(last=False)
    return value


class PackCache:
    """Where one evaluation gets its packs: `directory` (None: no disk cache, and nothing shared
    with other evaluations of this process; one evaluation still reuses its own packs, e.g. aoa
    across a run's checkpoints). `base`: the key fields that do not depend on the model."""

    def __init__(self, directory: Path | None, base: dict[str, Any]):
        self.directory = Path(directory) if directory is not None else None
        self.base = base
        self._own: dict[str, PreparedPack] = {}
        self.hits = self.builds = 0

    def get(
        self,
        model_dir: Path,
        max_tokens: int | None,
        build: Callable[[], PreparedPack],
        row_tokens: int = ROW_TOKENS,
    ) -> PreparedPack:
        """The pack for the tokenizer in `model_dir`: from this evaluation, this process, the
        disk, or `build()` (then stored)."""
        key_fields = pack_fields(self.base, model_dir, max_tokens, row_tokens)
        if key_fields is None:
            self.builds += 1
            return build()
        key = pack_key(key_fields)
        pack = self._own.get(key) or (_memo.get(key) if self.directory is not None else None)
        if pack is None and self.directory is not None:
            from cdhpc.base.paths import inside

            pack = read_pack(inside(self.directory, f"{key}.npz"), key_fields)
        if pack is None:
            pack = build()
            self.builds += 1
            if self.directory is not None:
                self._store(key, key_fields, pack)
        else:
            self.hits += 1
        self._own[key] = pack
        if self.directory is not None:
            _remember(key, pack)
        return pack

    def _store(self, key: str, key_fields: dict[str, Any], pack: PreparedPack) -> None:
        """Write the pack atomically; a failed write (disk full, read-only) only costs a rebuild."""
        from cdhpc.base.atomicio import atomic_write_bytes
        from cdhpc.base.paths import inside

        path = inside(self.directory, f"{key}.npz")
        try:
            atomic_write_bytes(path, _to_bytes(pack, key_fields))
        except OSError as err:
            log.warning("pack cache %s: not written (%s); the next evaluation builds it again", path, err)

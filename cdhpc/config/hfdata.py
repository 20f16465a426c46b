"""HF ``datasets`` as a data source: ``data.babylm_dir`` and ``data.tinystories`` name a local
text release, a dataset saved with ``save_to_disk``, or a hub dataset id already in the local
Hugging Face cache (read offline: nothing is downloaded at run time).

Expected shape (one row per document, column ``text``):
- tinystories: splits ``train`` and ``validation`` (as ``roneneldan/TinyStories`` has);
- babylm_dir: splits ``train`` and ``test`` with a ``source`` column naming the BabyLM 2024 file
  (gutenberg, simple_wiki, open_subtitles).

The prepare step writes such a dataset out in the release's text layout (`materialize`) and
builds the corpus from that exactly as from the release, so both paths give the same bytes for
the same documents. Any Arrow cache ``datasets`` makes goes to a folder inside the workdir.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
Kind = Literal["local", "saved", "hub"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


class DataSourceError(ValueError):
    """A data key names no usable dataset (one line naming the key, the value and the fix)."""


def saved_dataset(path: Path) -> bool:
    """`path` is a folder written by ``Dataset(Dict).save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def source_kind(value: str | Path) -> Kind | None:
    """'saved', 'local' (an existing path), 'hub' (not a path here but shaped owner/name), or None."""
    path = Path(value)
    if path.exists():
        return "saved" if path.is_dir() and saved_dataset(path) else "local"
    return "hub" if HUB_ID.fullmatch(str(value)) else None


def hub_snapshot(repo_id: str, key: str) -> Path:
    """The local snapshot of hub dataset `repo_id` (HF cache only; DataSourceError when absent)."""
    os.environ.update(OFFLINE)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise DataSourceError(
            f"{key}={repo_id!r} is neither a local path nor a dataset in the local Hugging Face cache "
            f"({type(e).__name__}); fetch it first where there is network "
            f"(huggingface-cli download --repo-type dataset {repo_id}) or give a local folder"
        ) from None


def load(value: str | Path, key: str, cache_dir: Path) -> tuple[Any, str]:
    """(DatasetDict, provenance: the saved splits' fingerprints or the hub snapshot's commit)."""
    os.environ.update(OFFLINE)  # read when datasets is imported: this process never downloads
    import datasets

    from cdhpc.base.thirdparty import dataset_fingerprint

    if source_kind(value) == "saved":
        ds = datasets.load_from_disk(str(value))
        if not isinstance(ds, datasets.DatasetDict):
            raise DataSourceError(f"{key}={value}: a single Dataset; save a DatasetDict with its splits")
        return ds, ",".join(f"{s}:{dataset_fingerprint(ds[s])}" for s in sorted(ds))
    snapshot = hub_snapshot(str(value), key)
    ds = datasets.load_dataset(str(snapshot), cache_dir=str(cache_dir))
    return ds, f"hub:{value}@{snapshot.name}"


def _columns(ds: Any, key: str, value: Any, splits: tuple[str, ...], columns: tuple[str, ...]) -> None:
    for split in splits:
        if split not in ds:
            raise DataSourceError(
                f"{key}={value}: no split {split!r} (has {', '.join(sorted(ds))}); "
                f"expected splits {', '.join(splits)}"
            )
        missing = [c for c in columns if c not in ds[split].column_names]
        if missing:
            raise DataSourceError(
                f"{key}={value}: split {split!r} has no column {missing[0]!r} "
                f"(has {', '.join(ds[split].column_names)})"
            )


def _document(text: str) -> str:
    """A document as the release's files hold it: its non-empty lines (empty lines end documents)."""
    return "\n".join(line for line in str(text).splitlines() if line.strip())


def materialize_tinystories(value: str | Path, out: Path, cache_dir: Path) -> tuple[Path, str]:
    """Write splits train/validation as TinyStories-{train,valid}.txt (stories ended by
    <|endoftext|> lines) into `out`; returns (out, provenance)."""
    from cdhpc.corpora.tinybabylm import END_OF_TEXT

    ds, provenance = load(value, "data.tinystories", cache_dir)
    _columns(ds, "data.tinystories", value, ("train", "validation"), ("text",))
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "TinyStories-train.txt"), ("validation", "TinyStories-valid.txt")):
        with open(out / name, "w", encoding="utf-8", newline="\n") as f:
            for batch in ds[split].iter(batch_size=1000):
                f.writelines(f"{_document(t)}\n{END_OF_TEXT}\n" for t in batch["text"] if str(t).strip())
    return out, provenance


def materialize_babylm(value: str | Path, out: Path, cache_dir: Path) -> tuple[Path, str]:
    """Write splits train/test, by their `source` column, as train_100M/<source>.train and
    test/<source>.test (documents separated by an empty line) into `out`; returns (out, provenance)."""
    from cdhpc.corpora.tinybabylm import BABYLM_SOURCES

    ds, provenance = load(value, "data.babylm_dir", cache_dir)
    _columns(ds, "data.babylm_dir", value, ("train", "test"), ("text", "source"))
    for split, folder, suffix in (("train", "train_100M", "train"), ("test", "test", "test")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        files = {
            s: open(out / folder / f"{s}.{suffix}", "w", encoding="utf-8", newline="\n")
            for s in BABYLM_SOURCES
        }
        try:
            for batch in ds[split].iter(batch_size=1000):
                for text, source in zip(batch["text"], batch["source"]):
                    if source not in files:
                        raise DataSourceError(
                            f"data.babylm_dir={value}: split {split!r} has source {source!r}; "
                            f"allowed: {', '.join(BABYLM_SOURCES)}"
                        )
                    if str(text).strip():
                        files[source].write(_document(text) + "\n\n")
        finally:
            for f in files.values():
                f.close()
    return out, provenance


def resolve_eval_data(cfg: Any) -> Any:
    """`cfg` with an ``eval.data_dir`` that names a cached hub dataset repo replaced by its local
    snapshot folder (the evaluation data is read as files, as the official pipeline reads them);
    unchanged otherwise, and where the repo is not cached (the config check reports that)."""
    value = cfg.eval.data_dir
    if value == "toy" or source_kind(value) != "hub":
        return cfg
    try:
        snapshot = hub_snapshot(str(value), "eval.data_dir")
    except DataSourceError:
        return cfg
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"data_dir": snapshot})})

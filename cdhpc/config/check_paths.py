"""The sweep's paths checked before anything runs: the workdir can be used or created, the data
sources and the evaluation data exist (a local path, or a hub dataset id in the local Hugging
Face cache: `cdhpc.config.hfdata`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cdhpc.config.yamlio import Issue

if TYPE_CHECKING:
    from cdhpc.config import SweepConfig


def path_kind(path: Path) -> tuple[str | None, str | None]:
    """('dir' | 'other' | None when absent, None), or (None, why the path cannot be looked at)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as e:
        return None, e.strerror
    return ("dir" if stat.S_ISDIR(mode) else "other"), None


def check_workdir(cfg: SweepConfig) -> list[Issue]:
    """The workdir is a directory or absent, and can be created where it is absent."""
    path = cfg.workdir
    kind, error = path_kind(path)
    if error:
        return [Issue(("workdir",), f"cannot be used: {error}", str(path))]
    if kind == "other":
        return [
            Issue(
                ("workdir",),
                "exists and is not a directory (workdir: a directory, or a path to create)",
                str(path),
            )
        ]
    if kind is None:
        for parent in path.absolute().parents:
            kind, error = path_kind(parent)
            if error or kind == "other":
                why = f": {error}" if error else " is not a directory"
                return [Issue(("workdir",), f"cannot be created: {parent}{why}", str(path))]
            if kind == "dir":
                break
    return []


def check_data(cfg: SweepConfig) -> list[Issue]:
    d = cfg.data
    required = {"prepared": ("corpus_dir",), "tinybabylm": ("babylm_dir", "tinystories")}.get(d.kind, ())
    issues = []
    for key in required:
        path = getattr(d, key)
        kind, error = path_kind(path) if path is not None else (None, None)
        if path is None:
            issues.append(Issue(("data", key), f"required when data.kind is {d.kind!r}", has_value=False))
        elif error:
            issues.append(Issue(("data", key), f"cannot be read: {error}", str(path)))
        elif kind is None and key in (
            "babylm_dir",
            "tinystories",
        ):  # or a hub id in the HF cache (cdhpc.config.hfdata)
            issues += _hub_issue(("data", key), path)
        elif kind is None:
            issues.append(
                Issue(
                    ("data", key),
                    "path does not exist (give a local file or directory)",
                    str(path),
                    missing_path=True,
                )
            )
    if d.kind == "prepared" and d.corpus_dir is not None and path_kind(d.corpus_dir)[0] == "dir":
        for split in ("train", "seed", "test"):
            if path_kind(Path(d.corpus_dir) / split)[0] != "dir":
                msg = (
                    f"prepared corpus has no {split}/ directory "
                    "(expected train/, seed/, test/ of <source>.txt)"
                )
                issues.append(Issue(("data", "corpus_dir"), msg, str(d.corpus_dir)))
    return issues


def _hub_id(path: Path) -> bool:
    from cdhpc.config.hfdata import source_kind

    return source_kind(path) == "hub"


def _saved_dataset(path: Path) -> bool:
    from cdhpc.config.hfdata import saved_dataset

    return saved_dataset(Path(path))


def _hub_issue(loc: tuple, path: Path) -> list[Issue]:
    """None when `path`, not a local path, names a hub dataset in the local HF cache."""
    from cdhpc.config.hfdata import DataSourceError, hub_snapshot, source_kind

    if source_kind(path) != "hub":
        return [
            Issue(
                loc,
                "path does not exist (give a local folder, a save_to_disk dataset, or a hub dataset id "
                "in the local Hugging Face cache)",
                str(path),
                missing_path=True,
            )
        ]
    try:
        hub_snapshot(str(path), ".".join(loc))
    except DataSourceError as e:
        return [Issue(loc, str(e).split(" is ", 1)[1], str(path), missing_path=True)]
    return []


def check_eval_data(cfg: SweepConfig) -> list[Issue]:
    """eval.data_dir: toy, a folder of task files, or a hub dataset id in the local HF cache."""
    issues: list[Issue] = []
    e = cfg.eval
    kind, error = path_kind(e.data_dir) if e.data_dir != "toy" else ("dir", None)
    if error:
        issues.append(Issue(("eval", "data_dir"), f"cannot be read: {error}", str(e.data_dir)))
    elif kind is None and _hub_id(e.data_dir):  # a hub dataset repo in the HF cache (cdhpc.config.hfdata)
        issues += _hub_issue(("eval", "data_dir"), e.data_dir)
    elif kind == "dir" and e.data_dir != "toy" and _saved_dataset(e.data_dir):
        issues.append(
            Issue(
                ("eval", "data_dir"),
                "is a save_to_disk dataset; the evaluation data is a folder of "
                "task files (evaluation_data/, as the official pipeline reads it): give that folder or "
                "a hub dataset id in the local Hugging Face cache",
                str(e.data_dir),
            )
        )
    elif kind != "dir":
        issues.append(
            Issue(
                ("eval", "data_dir"),
                "directory does not exist (the BabyLM evaluation_data dir, or toy)",
                str(e.data_dir),
                missing_path=True,
            )
        )
    if e.data_dir == "toy" and cfg.data.kind != "toy" and any(t != "perplexity" for t in e.tasks):
        issues.append(
            Issue(
                ("eval", "data_dir"),
                "toy eval data comes with data.kind 'toy'; give the evaluation_data directory",
                "toy",
            )
        )
    return issues

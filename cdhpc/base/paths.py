"""Names that become file and job names, and paths that must stay inside the workdir.

Method, preset, run and sweep names end up in paths (``<stage>/<name>-<key8>/``, receipts, job
records) and in SLURM job names, so they are checked once, at config time, against one rule.
``inside`` is the belt to those braces: every path built from a name under a root goes through
it, and a path that would leave the root is an error rather than a write somewhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '.', '_', '+', '-', starting with a letter or digit"
MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux filesystems
MAX_PATH_BYTES = 4096  # PATH_MAX


def name_error(name: object) -> str | None:
    """Why `name` cannot name a sweep, method, preset or run (None when it can)."""
    if not isinstance(name, str):
        return f"a name must be a string ({NAME_RULE})"
    if NAME_RE.fullmatch(name) is None:
        return f"not a valid name ({NAME_RULE}; names become file and job names)"
    return None


def check_name(name: str) -> str:
    """`name` itself; ValueError (with the rule) when it is not a valid name."""
    error = name_error(name)
    if error:
        raise ValueError(error)
    return name


def path_error(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a local path at all (NUL byte, over-long), before touching the disk."""
    text = os.fspath(path)
    if "\0" in text:
        return "a path cannot contain a NUL byte"
    if len(os.fsencode(text)) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    long = next((p for p in Path(text).parts if len(os.fsencode(p)) > MAX_COMPONENT_BYTES), None)
    if long is not None:
        return f"path component {long[:20]!r}... is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def component(text: str) -> str:
    """`text` when it is one safe path component (not empty, '.', '..', no '/' or NUL); else ValueError."""
    if text in ("", ".", "..") or "/" in text or "\0" in text or (os.altsep and os.altsep in text):
        raise ValueError(
            f"{text!r} is not a single file name (a path built from it would leave its directory)"
        )
    return text


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts...``, raising ValueError when the resolved path (symlinks followed) is not
    under the resolved root: a '..', an absolute part or a link out of the root. The returned
    path is the joined one (relative when root is), not the resolved one."""
    path = Path(root).joinpath(*parts)
    real_root = Path(root).resolve()
    if not path.resolve().is_relative_to(real_root):
        raise ValueError(f"path {path} built from {parts!r} leaves {real_root}")
    return path

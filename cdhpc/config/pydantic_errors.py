"""Pydantic's validation errors as this project's `Issue`s: one per bad key path (the branches
of a union merged with "or"), unknown keys with a did-you-mean and the keys allowed there, each
located at its YAML line or ``key=value`` override (`locate`)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from cdhpc.config.yamlio import Issue, Loc


def format_pydantic_errors(
    err: Any,
    model: type,
    lines: dict[Loc, int],
    overridden: dict[Loc, str],
    moved: dict[Loc, Loc] | None = None,
) -> list[Issue]:
    """One Issue per bad key path (union branches merged), with did-you-mean for unknown keys."""
    by_loc: dict[Loc, Issue] = {}
    raw = err.errors(include_url=False)
    for e in raw:
        loc = _data_loc(e["loc"], e.get("input"), e["type"])
        issue = _issue_for(e, loc, model)
        if loc in by_loc:  # another branch of a union: "or"
            prev = by_loc[loc]
            issue = dataclasses.replace(prev, message=f"{prev.message}; or {issue.message}")
        by_loc[loc] = issue
    return locate(list(by_loc.values()), lines, overridden, moved)


def locate(
    issues: list[Issue],
    lines: dict[Loc, int],
    overridden: dict[Loc, str],
    moved: dict[Loc, Loc] | None = None,
) -> list[Issue]:
    """Issues with their line or override. `moved` maps a key path the data got from elsewhere
    (a method's generation key inherited from the top-level `generation`) to where it was
    written; the issue is reported there, once."""
    out: list[Issue] = []
    for issue in issues:
        for n in range(len(issue.loc), 0, -1):
            if moved and issue.loc[:n] in moved:
                issue = dataclasses.replace(issue, loc=moved[issue.loc[:n]] + issue.loc[n:])
                break
        issue = issue.located(lines, overridden)
        if issue not in out:
            out.append(issue)
    return out


def _data_loc(loc: Loc, value: Any, kind: str) -> Loc:
    # pydantic adds union-branch tags (e.g. "literal['toy']", "function-after[...]") to locations.
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _TYPE_TAGS))


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "Path", "is-instance[Path]", "none"}


def _issue_for(e: dict, loc: Loc, model: type) -> Issue:
    kind, value = e["type"], e.get("input")
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        key = str(loc[-1])
        hint = (
            difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            or [k for k in allowed if k.startswith(key)][:1]
        )
        msg = f"unknown key{f'; did you mean {hint[0]!r}?' if hint else ''} (allowed: {', '.join(allowed)})"
        return Issue(loc, msg, has_value=False)
    if kind == "missing":
        return Issue(loc, "required key is missing", has_value=False)
    msg = e["msg"].removeprefix("Value error, ")
    doc = _doc_at(model, loc)
    return Issue(loc, f"{msg}{f' ({doc})' if doc else ''}", value)


def _keys_at(model: type, loc: Loc) -> list[str]:
    tp = _type_at(model, loc)
    if tp is None:
        return []
    if dataclasses.is_dataclass(tp):
        return [f.name for f in dataclasses.fields(tp)]
    return [f.alias or name for name, f in tp.model_fields.items()]


def _doc_at(model: type, loc: Loc) -> str | None:
    if not loc:
        return None
    parent = _type_at(model, loc[:-1])
    fields = getattr(parent, "model_fields", {})
    field = fields.get(loc[-1]) or next((f for f in fields.values() if f.alias == loc[-1]), None)
    return field.description.split("\n")[0].strip() if field and field.description else None


def _type_at(tp: Any, loc: Loc) -> Any:
    """The model (or dataclass) class reached by following a data path through annotations."""
    for part in loc:
        tp = _unwrap(tp)
        if tp is None:
            return None
        if hasattr(tp, "model_fields"):
            field = tp.model_fields.get(part) or next(
                (f for f in tp.model_fields.values() if f.alias == part), None
            )
            tp = field.annotation if field else None
        elif dataclasses.is_dataclass(tp):
            tp = next((f.type for f in dataclasses.fields(tp) if f.name == part), None)
        else:
            origin = typing.get_origin(tp)
            args = typing.get_args(tp)
            tp = args[-1] if origin in (dict, list, tuple) and args else None
    tp = _unwrap(tp)
    return tp if hasattr(tp, "model_fields") or dataclasses.is_dataclass(tp) else None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional/Union down to the first model, dataclass or container type."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            arg = _unwrap(arg)
            if (
                hasattr(arg, "model_fields")
                or dataclasses.is_dataclass(arg)
                or typing.get_origin(arg) in (dict, list)
            ):
                return arg
        return None
    return tp

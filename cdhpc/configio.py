"""Reading sweep.yaml with line numbers, applying ``key=value`` overrides, and turning validation
failures into errors that name the file, line, key path, bad value and what is allowed."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[Any, ...]


@dataclass(frozen=True)
class Issue:
    """One problem in a sweep: where (key path), what value, and what is wrong or allowed."""

    loc: Loc
    message: str
    value: Any = dataclasses.field(default=None, compare=False)
    has_value: bool = True
    line: int | None = None
    source: str | None = None
    missing_path: bool = False  # a local path that does not exist (a warning in --dry-run)

    def located(self, lines: dict[Loc, int], overridden: dict[Loc, str]) -> Issue:
        """The same issue with the YAML line (nearest key above) or the override that set it."""
        for n in range(len(self.loc), -1, -1):
            if self.loc[:n] in overridden:
                return dataclasses.replace(self, source=f"override {overridden[self.loc[:n]]!r}")
        for n in range(len(self.loc), 0, -1):
            if self.loc[:n] in lines:
                return dataclasses.replace(self, line=lines[self.loc[:n]])
        return self

    def render(self, path: Path) -> str:
        where = f"{path}:{self.line}" if self.line else str(path)
        if self.source:
            where += f" ({self.source})"
        key = ".".join(str(p) for p in self.loc) or "<top level>"
        value = f" = {self.value!r}" if self.has_value else ""
        return f"{where}: {key}{value}: {self.message}"


class ConfigError(Exception):
    """A sweep that cannot be used. The CLI prints it and exits 2; nothing was written."""

    def __init__(self, path: str | Path, issues: list[Issue]):
        self.path = Path(path)
        self.issues = issues
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"invalid sweep {self.path} ({len(self.issues)} error{'s' * (len(self.issues) != 1)}):"
        return "\n".join([head] + ["  " + i.render(self.path) for i in self.issues])


def load_yaml(path: Path) -> tuple[dict, dict[Loc, int]]:
    """Parse a YAML mapping; returns (data, {key path: 1-based line}). Duplicate keys are errors."""
    if not path.is_file():
        raise ConfigError(path, [Issue((), "file not found (expected a sweep .yaml file)", has_value=False)])
    text = path.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        msg = f"YAML syntax error: {getattr(e, 'problem', None) or e}"
        raise ConfigError(path, [Issue((), msg, has_value=False, line=line)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(path, [Issue((), "the sweep must be a YAML mapping of keys", data)])
    lines: dict[Loc, int] = {}
    issues: list[Issue] = []
    _walk(node, (), lines, issues)
    if issues:
        raise ConfigError(path, issues)
    return data, lines


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], issues: list[Issue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _walk(value_node, loc, {}, issues)  # merged anchors keep their own lines
                continue
            key = key_node.value
            if key in seen:
                msg = f"duplicate key {key!r} (a YAML mapping keeps only the last one; rename or merge them)"
                issues.append(Issue(loc + (key,), msg, has_value=False, line=key_node.start_mark.line + 1))
            seen.add(key)
            lines.setdefault(loc + (key,), key_node.start_mark.line + 1)
            _walk(value_node, loc + (key,), lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(loc + (i,), item.start_mark.line + 1)
            _walk(item, loc + (i,), lines, issues)


def apply_overrides(path: Path, raw: dict, overrides: list[str]) -> tuple[dict, dict[Loc, str]]:
    """Apply ``dotted.key=value`` overrides (values typed as YAML). Keys that contain dots (method
    names like cd-drop-0.7) are matched greedily against the existing keys."""
    data = copy.deepcopy(raw)
    overridden: dict[Loc, str] = {}
    issues = []
    for text in overrides:
        key, sep, value_text = text.partition("=")
        if not sep or not key:
            issues.append(Issue(("<override>",), "expected key=value, e.g. pretrain.steps=100", text))
            continue
        try:
            value = yaml.safe_load(value_text) if value_text else None
        except yaml.YAMLError as e:
            issues.append(Issue(("<override>",), f"value is not valid YAML: {e}", text))
            continue
        loc = _set_dotted(data, key.split("."), value)
        if loc is None:
            issues.append(Issue(("<override>",), f"cannot set {key!r}: a parent key is not a mapping", text))
        else:
            overridden[loc] = text
    if issues:
        raise ConfigError(path, issues)
    return data, overridden


def _set_dotted(data: dict, parts: list[str], value: Any) -> Loc | None:
    loc: list[str] = []
    node = data
    while parts:
        if not isinstance(node, dict):
            return None
        n = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in node), 1)
        key, parts = ".".join(parts[:n]), parts[n:]
        loc.append(key)
        if not parts:
            if isinstance(value, str) and isinstance(node.get(key), dict):  # executor=slurm sets executor.kind
                node[key] = {**node[key], "kind": value}
                loc.append("kind")
            else:
                node[key] = value
        else:  # copy on the way down: YAML aliases share one dict, an override must touch one path
            child = node.get(key, {})
            node[key] = child = dict(child) if isinstance(child, dict) else child
            node = child
    return tuple(loc)


def format_pydantic_errors(err: Any, model: type, lines: dict[Loc, int], overridden: dict[Loc, str]) -> list[Issue]:
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
    return [i.located(lines, overridden) for i in by_loc.values()]


def _data_loc(loc: Loc, value: Any, kind: str) -> Loc:
    # pydantic adds union-branch tags (e.g. "literal['toy']", "function-after[...]") to locations.
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _TYPE_TAGS))


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "Path", "is-instance[Path]", "none"}


def _issue_for(e: dict, loc: Loc, model: type) -> Issue:
    kind, value = e["type"], e.get("input")
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) or [k for k in allowed if k.startswith(key)][:1]
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
            field = tp.model_fields.get(part) or next((f for f in tp.model_fields.values() if f.alias == part), None)
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
            if hasattr(arg, "model_fields") or dataclasses.is_dataclass(arg) or typing.get_origin(arg) in (dict, list):
                return arg
        return None
    return tp

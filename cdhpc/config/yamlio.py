"""Reading sweep.yaml with line numbers, applying ``key=value`` overrides, and turning validation
failures into errors that name the file, line, key path, bad value and what is allowed.

A sweep file is untrusted input: it is read as UTF-8 only, composed with bounded nesting and a
bounded number of values (aliases counted as what they expand to, self-references refused), so
a hostile or broken file ends in a ConfigError, never in a MemoryError, RecursionError or hang.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[Any, ...]

MAX_FILE_BYTES = 256 * 1024  # a sweep file is a few KB; paper.yaml is 5 KB
MAX_NODES = 20_000  # YAML values after alias expansion (paper.yaml: 746)
MAX_DEPTH = 64  # nesting levels, through aliases too (paper.yaml: 5)


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
        """The same issue with the YAML line (nearest key above) or the override that set it. A key
        the file does not have but an override's path starts with was made by that override (a
        misspelled override path): the override is named, not the line of a parent key."""
        if self.source is not None or self.line is not None:
            return self
        for n in range(len(self.loc), -1, -1):
            if self.loc[:n] in overridden:
                return dataclasses.replace(self, source=f"override {overridden[self.loc[:n]]!r}")
        if self.loc and self.loc not in lines:
            made = next((text for loc, text in overridden.items() if loc[: len(self.loc)] == self.loc), None)
            if made is not None:
                return dataclasses.replace(self, source=f"override {made!r}")
        for n in range(len(self.loc), 0, -1):
            if self.loc[:n] in lines:
                return dataclasses.replace(self, line=lines[self.loc[:n]])
        return self

    def render(self, path: Path) -> str:
        """One line: a key or message with a newline in it cannot split an error in two."""
        where = f"{path}:{self.line}" if self.line else str(path)
        if self.source:
            where += f" ({self.source})"
        key = ".".join(str(p) if str(p).isprintable() else repr(p) for p in self.loc) or "<top level>"
        value = f" = {_short_repr(self.value)}" if self.has_value else ""
        return f"{where}: {key}{value}: {' '.join(self.message.splitlines())}"


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ConfigError(Exception):
    """A sweep that cannot be used. The CLI prints it and exits 2; nothing was written."""

    def __init__(self, path: str | Path, issues: list[Issue], kind: str = "sweep"):
        self.path = Path(path)
        self.issues = issues
        self.kind = kind  # what the file is: "sweep" or "cluster profile"
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"invalid {self.kind} {self.path} ({len(self.issues)} error{'s' * (len(self.issues) != 1)}):"
        return "\n".join([head] + ["  " + i.render(self.path) for i in self.issues])


def load_yaml(path: Path) -> tuple[dict, dict[Loc, int]]:
    """Parse a YAML mapping; returns (data, {key path: 1-based line}). Duplicate keys are errors."""
    try:
        if not path.is_file():
            raise ConfigError(
                path, [Issue((), "file not found (expected a sweep .yaml file)", has_value=False)]
            )
        size = path.stat().st_size
        blob = path.read_bytes() if size <= MAX_FILE_BYTES else b""
    except OSError as e:
        raise ConfigError(path, [Issue((), f"cannot read the file: {e.strerror}", has_value=False)]) from None
    if size > MAX_FILE_BYTES:
        msg = f"file is {size:,} bytes; a sweep file is at most {MAX_FILE_BYTES:,} bytes"
        raise ConfigError(path, [Issue((), msg, has_value=False)])
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        line = blob.count(b"\n", 0, e.start) + 1
        column = e.start - (blob.rfind(b"\n", 0, e.start) + 1) + 1
        msg = f"not UTF-8: byte {blob[e.start]:#04x} at column {column} (save the file as UTF-8)"
        raise ConfigError(path, [Issue((), msg, has_value=False, line=line)]) from None
    lines: dict[Loc, int] = {}
    issues: list[Issue] = []
    try:  # lines and duplicate keys from the nodes as written, before merge keys are flattened into them
        data = parse_yaml(text, lambda node: _walk(node, (), lines, issues))[1]
    except YAMLProblem as e:
        raise ConfigError(path, [Issue((), e.message, has_value=False, line=e.line)]) from None
    if issues:
        raise ConfigError(path, issues)
    if not isinstance(data, dict):
        raise ConfigError(path, [Issue((), "the sweep must be a YAML mapping of keys", data)])
    return data, lines


class YAMLProblem(Exception):
    """YAML text that cannot be a config value: bad syntax, too deep, too big, self-referencing."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message, self.line = message, line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops past MAX_DEPTH nesting levels or MAX_NODES values (it
    recurses once per level: deep nesting would otherwise end in a RecursionError)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = self.nodes = 0

    def compose_node(self, parent, index):
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise YAMLProblem(
                    f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark.line + 1
                )
            if self.nodes > MAX_NODES:
                raise YAMLProblem(
                    f"more than {MAX_NODES:,} YAML values", self.peek_event().start_mark.line + 1
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, inspect: Callable[[yaml.Node], None] | None = None) -> tuple[yaml.Node | None, Any]:
    """(node graph, Python value) of one YAML document, within the bounds; raises YAMLProblem.
    `inspect` sees the checked node graph before it is constructed."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # checks for unprintable characters first
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        if inspect is not None:
            inspect(node)
        try:
            return node, loader.construct_document(node)
        except (ValueError, OverflowError) as e:  # int("9" * 5000), a date 2001-13-45, ...
            raise YAMLProblem(f"a value cannot be read: {str(e).splitlines()[0]}", None) from None
    except yaml.reader.ReaderError as e:
        char = chr(e.character) if isinstance(e.character, int) else e.character
        raise YAMLProblem(
            f"character {char!r} is not allowed in YAML", text.count("\n", 0, e.position) + 1
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
        raise YAMLProblem(f"YAML syntax error: {problem}", mark.line + 1 if mark else None) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Alias bombs and self-references, before anything walks the data as a tree: aliases share
    one node, so each node's expanded size and height is computed once (iteratively, post-order)."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    started: set[int] = set()  # nodes on the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        kids = _children(node)
        if finished:
            started.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            height[id(node)] = 1 + max((height[id(k)] for k in kids), default=0)
            line = node.start_mark.line + 1
            if size[id(node)] > MAX_NODES:
                raise YAMLProblem(
                    f"aliases expand this value to more than {MAX_NODES:,} YAML values "
                    "(an alias bomb?); a sweep needs far fewer",
                    line,
                )
            if height[id(node)] > MAX_DEPTH:
                raise YAMLProblem(f"aliases nest this value deeper than {MAX_DEPTH} levels", line)
        elif id(node) in started:
            raise YAMLProblem(
                "an alias refers to the value that contains it (a self-reference never ends)",
                node.start_mark.line + 1,
            )
        elif id(node) not in size:
            started.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], issues: list[Issue]) -> None:
    """Lines of key paths, and duplicate keys. A merged anchor (`<<: *a`) was walked where it is
    defined; its keys may repeat the mapping's own (the mapping's win)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # a key that is a list or mapping: the constructor refuses it
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
    names like cd-drop-0.7) are matched greedily against the existing keys. Errors name the
    override as it was typed."""
    data = copy.deepcopy(raw)
    overridden: dict[Loc, str] = {}
    issues = []
    for text in overrides:
        key, sep, value_text = text.partition("=")
        where = f"override {text!r}"
        if not sep or not key:
            issues.append(Issue(("<override>",), "expected key=value, e.g. pretrain.steps=100", text))
            continue
        loc = tuple(key.split("."))
        if not value_text.strip():
            msg = "empty value; give one (key=null for null, key=\"''\" for an empty string)"
            issues.append(Issue(loc, msg, has_value=False, source=where))
            continue
        try:
            value = parse_yaml(value_text)[1]
        except YAMLProblem as e:
            issues.append(Issue(loc, f"value is not valid YAML: {e.message}", value_text, source=where))
            continue
        result = _set_dotted(data, list(loc), value)
        if isinstance(result, str):
            issues.append(Issue(loc, result, has_value=False, source=where))
        else:
            overridden[result] = text
    if issues:
        raise ConfigError(path, issues)
    return data, overridden


def _set_dotted(data: dict, parts: list[str], value: Any) -> Loc | str:
    """The key path set, or why it cannot be set."""
    loc: list[str] = []
    node = data
    while parts:
        if not isinstance(node, dict):
            return f"cannot set: {'.'.join(loc)} is not a mapping"
        n = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in node), 1)
        key, parts = ".".join(parts[:n]), parts[n:]
        if not key:
            return "empty key between dots (write dotted.key.path=value)"
        loc.append(key)
        if not parts:
            if isinstance(value, str) and isinstance(
                node.get(key), dict
            ):  # executor=slurm sets executor.kind
                node[key] = {**node[key], "kind": value}
                loc.append("kind")
            else:
                node[key] = value
        else:  # copy on the way down: YAML aliases share one dict, an override must touch one path
            child = node.get(key, {})
            node[key] = child = dict(child) if isinstance(child, dict) else child
            node = child
    return tuple(loc)

"""The package rule of docs/design.md §3, checked on the source (AST only: nothing is imported):

- every module of ``cdhpc/`` lives in a package by concern, except the root (``cdhpc/__init__.py``:
  STAGES, the version) and the entry modules (``python -m cdhpc[.launch|.bench|.gpufigures|.toydata]``,
  the ``cdhpc`` script, ``cdhpc.benchmarks``);
- a package imports only the packages ``ALLOWED`` lists for it (the library packages lm, corpora,
  evals and results only ``cdhpc.base``; nothing but the entry modules imports ``cdhpc.ui``);
- no import cycle between modules, counting imports inside functions (``if TYPE_CHECKING:`` imports
  do not run and do not count), except the ones ``KNOWN_CYCLES`` names with their reason.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ENTRY = {"cdhpc.__main__", "cdhpc.cli", "cdhpc.launch", "cdhpc.bench", "cdhpc.gpufigures", "cdhpc.toydata"}
THIN = {"cdhpc.__main__", "cdhpc.launch", "cdhpc.gpufigures", "cdhpc.toydata"}  # entry points that only call
ENTRY_PACKAGES = {"benchmarks"}  # `python -m cdhpc.bench NAME` runs cdhpc.benchmarks.NAME
LIBRARY = {"lm", "corpora", "evals", "results"}
ALLOWED: dict[str, set[str]] = {  # package -> the packages it may import besides itself and the root
    "base": set(),
    **{lib: {"base"} for lib in LIBRARY},
    "config": {"base", "lm", "corpora", "evals"},  # model presets, tracker packages, task names, HF corpora
    "sweep": {"base", "config"},
    "executors": {"base", "config", "sweep", "jobs"},  # they submit jobs.StepJob
    "jobs": {"base", "config", "sweep"} | LIBRARY,  # the thin per-stage steps call the library
    "ui": {"base", "config", "sweep", "executors", "jobs"} | LIBRARY,
}
# Cycles left on purpose, each with its reason; the test fails when one is gone, so the list shrinks.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    path: str  # file of src, relative to the tree
    line: int
    runs: bool  # False: under `if TYPE_CHECKING:` (never executed)


def module_name(tree: Path, path: Path) -> str:
    parts = list(path.relative_to(tree).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(tree: Path) -> dict[str, Path]:
    return {module_name(tree, p): p for top in ("cdhpc", "jobs") for p in sorted((tree / top).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that `name` (a module, or a name inside one) is, or None (third party)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@functools.cache  # the repository's graph is read by several tests
def edges(tree: Path) -> tuple[Edge, ...]:
    known = modules(tree)
    out = []
    for src, path in known.items():
        syntax = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_nodes(syntax)
        package = src if path.name == "__init__.py" else src.rpartition(".")[0]
        for node in ast.walk(syntax):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level-1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for t in targets:
                dst = _resolve(t, known)
                if dst is not None and dst != src:
                    out.append(
                        Edge(src, dst, str(path.relative_to(tree)), node.lineno, id(node) not in typing_only)
                    )
    return tuple(out)


def package_of(module: str) -> str:
    """root, entry, jobs, or the package by concern under cdhpc; '' for a flat module of cdhpc."""
    parts = module.split(".")
    if module == "cdhpc":
        return "root"
    if parts[0] == "jobs":
        return "jobs"
    if module in ENTRY or parts[1] in ENTRY_PACKAGES:
        return "entry"
    return parts[1] if len(parts) > 2 or parts[1] in ALLOWED else ""


def layout_errors(tree: Path) -> list[str]:
    errors = []
    for m, path in modules(tree).items():
        if package_of(m) == "":
            errors.append(
                f"{path.relative_to(tree)}: {m} is a flat module of cdhpc; put it in a package "
                f"({', '.join(sorted(ALLOWED))}) or, if it is an entry point, add it to ENTRY"
            )
        elif package_of(m) not in ALLOWED | {"root": set(), "entry": set()}:
            errors.append(
                f"{path.relative_to(tree)}: {m}: package {package_of(m)!r} has no rule in ALLOWED "
                "(tests/test_layout.py, docs/design.md §3)"
            )
    for e in edges(tree):
        src, dst = package_of(e.src), package_of(e.dst)
        if src in ("entry", "") or dst == "root" or src == dst or dst not in ALLOWED | {"entry": set()}:
            continue
        if src == "root" or dst == "entry" or dst not in ALLOWED.get(src, set()):
            may = ", ".join(sorted(ALLOWED.get(src, set()))) or "nothing of cdhpc"
            errors.append(
                f"{e.path}:{e.line}: {e.src} imports {e.dst}: {src} may import only {may} (docs/design.md §3)"
            )
    return errors


def cycles(tree: Path) -> list[list[str]]:
    """Strongly connected components (size > 1) of the executed imports, each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules(tree)}
    for e in edges(tree):
        if e.runs:
            graph[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~150 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_errors(tree: Path, known: dict[frozenset[str], str]) -> list[str]:
    found = cycles(tree)
    by_pair = {(e.src, e.dst): e for e in edges(tree) if e.runs}
    errors = []
    for comp in found:
        if frozenset(comp) in known:
            continue
        inside = sorted(
            f"{e.path}:{e.line} ({e.src} -> {e.dst})"
            for (s, d), e in by_pair.items()
            if s in comp and d in comp
        )
        errors.append(f"import cycle {' <-> '.join(comp)}: " + "; ".join(inside))
    gone = [" <-> ".join(sorted(k)) for k in known if sorted(k) not in found]
    errors += [f"KNOWN_CYCLES lists {g}, which is no longer a cycle: remove it" for g in gone]
    return errors


# ----------------------------------------------------------------------------- the repository
def test_the_repository_keeps_the_package_rule():
    errors = layout_errors(ROOT)
    assert not errors, "\n".join(errors)


def test_the_repository_has_no_import_cycles():
    errors = cycle_errors(ROOT, KNOWN_CYCLES)
    assert not errors, "\n".join(errors)


def test_no_module_is_over_400_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in modules(ROOT).values()
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long, "split these (docs/design.md §2):\n" + "\n".join(long)


def test_thin_entry_points_only_call_their_package():
    """`python -m cdhpc.launch|gpufigures|toydata` keep their dotted paths; the code is in a package."""
    fat = [
        f"{m}: {len(defs)} definitions ({', '.join(defs)})"
        for m in sorted(THIN)
        if (
            defs := [
                n.name
                for n in ast.parse(modules(ROOT)[m].read_text()).body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))
            ]
        )
    ]
    assert not fat, "move these into their package (docs/design.md §2):\n" + "\n".join(fat)


# ----------------------------------------------------------------------------- the checker itself
def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"cdhpc/__init__.py": "STAGES = ()\n", "jobs/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_names_an_upward_import_with_file_and_line(tmp_path):
    tree = write_tree(
        tmp_path,
        {
            "cdhpc/lm/__init__.py": "",
            "cdhpc/ui/__init__.py": "",
            "cdhpc/base/__init__.py": "",
            "cdhpc/ui/status.py": "def fmt(): ...\n",
            "cdhpc/base/keys.py": "",
            "cdhpc/lm/metrics.py": "from cdhpc import STAGES\nfrom cdhpc.base import keys\n\n"
            "def f():\n    from cdhpc.ui.status import fmt\n",
        },
    )
    assert layout_errors(tree) == [
        "cdhpc/lm/metrics.py:5: cdhpc.lm.metrics imports cdhpc.ui.status: "
        "lm may import only base (docs/design.md §3)"
    ]


def test_checker_allows_entry_modules_and_flags_flat_modules_and_importing_them(tmp_path):
    tree = write_tree(
        tmp_path,
        {
            "cdhpc/ui/__init__.py": "",
            "cdhpc/ui/launch.py": "",
            "cdhpc/launch.py": "from cdhpc.ui.launch import *\n",
            "cdhpc/helpers.py": "",
            "cdhpc/ui/tui.py": "import cdhpc.launch\n",
        },
    )
    errors = layout_errors(tree)
    assert len(errors) == 2, errors
    assert errors[0].startswith("cdhpc/helpers.py: cdhpc.helpers is a flat module of cdhpc")
    assert errors[1].startswith("cdhpc/ui/tui.py:1: cdhpc.ui.tui imports cdhpc.launch: ui may import only")


def test_checker_finds_function_level_cycles_and_skips_type_checking_imports(tmp_path):
    tree = write_tree(
        tmp_path,
        {
            "cdhpc/sweep/__init__.py": "",
            "cdhpc/sweep/manifest.py": "def f():\n    from cdhpc.sweep import lock\n",
            "cdhpc/sweep/lock.py": "from cdhpc.sweep.manifest import f\n",
            "cdhpc/sweep/plan.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from cdhpc.sweep.receipts import R\n",
            "cdhpc/sweep/receipts.py": "from cdhpc.sweep.plan import *\n",
        },
    )
    assert cycles(tree) == [["cdhpc.sweep.lock", "cdhpc.sweep.manifest"]]
    errors = cycle_errors(tree, {})
    assert errors == [
        "import cycle cdhpc.sweep.lock <-> cdhpc.sweep.manifest: "
        "cdhpc/sweep/lock.py:1 (cdhpc.sweep.lock -> cdhpc.sweep.manifest); "
        "cdhpc/sweep/manifest.py:2 (cdhpc.sweep.manifest -> cdhpc.sweep.lock)"
    ]
    stale = frozenset({"cdhpc.sweep.plan", "cdhpc.sweep.receipts"})
    assert cycle_errors(tree, {frozenset({"cdhpc.sweep.lock", "cdhpc.sweep.manifest"}): "x", stale: "y"}) == [
        "KNOWN_CYCLES lists cdhpc.sweep.plan <-> cdhpc.sweep.receipts, which is no longer a cycle: remove it"
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from cdhpc.sweep import plan\n", "cdhpc.sweep.plan"),  # a module imported from its package
        ("from cdhpc.sweep.plan import Plan\n", "cdhpc.sweep.plan"),  # a name inside a module
        ("import cdhpc.sweep.plan as p\n", "cdhpc.sweep.plan"),
        ("from .plan import Plan\n", "cdhpc.sweep.plan"),  # relative
        ("from . import plan\n", "cdhpc.sweep.plan"),
    ],
)
def test_checker_resolves_every_import_form(tmp_path, source, expected):
    tree = write_tree(
        tmp_path,
        {"cdhpc/sweep/__init__.py": "", "cdhpc/sweep/plan.py": "Plan = 1\n", "cdhpc/sweep/lock.py": source},
    )
    assert [e.dst for e in edges(tree) if e.src == "cdhpc.sweep.lock"] == [expected]

"""``python -m cdhpc.bench NAME [args]``: one measured figure as one JSON line.

Each benchmark measures our figure and the peer's side by side in the same run and reports their
ratio; ``cdhpc/benchmarks/NAME.py`` defines ``run(argv: list[str]) -> dict``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys

import cdhpc.benchmarks


def available() -> list[str]:
    """Names of the benchmarks shipped in ``cdhpc.benchmarks``."""
    return sorted(m.name for m in pkgutil.iter_modules(cdhpc.benchmarks.__path__))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m cdhpc.bench NAME [args]   (NAME: {', '.join(names)})")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"cdhpc.bench: unknown benchmark {name!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    result = importlib.import_module(f"cdhpc.benchmarks.{name}").run(rest)
    print(json.dumps(result, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

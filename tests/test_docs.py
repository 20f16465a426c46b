"""The repository documents itself: code cites docs/ pages that exist, by sections that exist, and
nothing cites the origin documents that live outside the repository (a reader cannot follow those)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Built from pieces so that this file does not match its own search.
OUTSIDE = re.compile(
    "|".join(
        re.escape(name)
        for name in (
            "PAPER" + ".md",
            "DESIGN" + ".md",
            "STYLE" + ".md",
            "../" + "shared",
            "/work/" + "shared",
        )
    )
)
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md) §(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]", re.MULTILINE)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini", ".json", ".jsonl", ""}
SKIP_DIRS = {
    ".git",
    "__pycache__",
    ".ruff_cache",
    ".pytest_cache",
    ".mypy_cache",
    ".venv",
    "venv",
    "runs",
    "node_modules",
}
MAX_BYTES = 2_000_000  # golden data files are small; anything larger is not prose or code


def repo_text_files() -> list[Path]:
    """Every text file of the working tree that a reader could open: code, configs, docs, CI."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]  # pruned, not walked
        for name in files:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES and path.is_file() and path.stat().st_size <= MAX_BYTES:
                out.append(path)
    return out


def section_numbers(page: Path) -> set[str]:
    """Numbers of the numbered headings of a Markdown page ("## 8. Statistics" -> "8")."""
    return set(HEADING.findall(page.read_text(encoding="utf-8")))


def broken_citations(text: str, docs: Path = DOCS) -> list[str]:
    """The `docs/<page>.md §N` citations in `text` whose page or section does not exist."""
    bad = []
    for page, section in CITATION.findall(text):
        target = docs / page
        if not target.is_file():
            bad.append(f"docs/{page} §{section}: no such page")
        elif section not in section_numbers(target):
            bad.append(f"docs/{page} §{section}: no heading numbered {section}")
    return bad


def test_nothing_cites_documents_outside_the_repository():
    hits = []
    for path in repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()[:100]}")
    assert not hits, "cite docs/method.md or docs/design.md instead:\n" + "\n".join(hits)


def test_every_docs_citation_names_an_existing_page_and_section():
    found, bad = 0, []
    for path in repo_text_files():
        if path == Path(__file__).resolve():  # its own examples cite pages that do not exist, on purpose
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += len(CITATION.findall(text))
        bad += [f"{path.relative_to(ROOT)}: {b}" for b in broken_citations(text)]
    assert not bad, "\n".join(bad)
    assert found >= 10  # the code does cite the docs (decoding, stats, report, configs, ...)


def test_the_citation_check_catches_a_missing_section_and_page(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## 1. One\n\n### 1.2 Sub\n\n## 3. Three\n", encoding="utf-8")
    text = "see docs/a.md §1, docs/a.md §1.2, docs/a.md §2, docs/a.md §3 and docs/b.md §1"
    assert broken_citations(text, tmp_path) == [
        "docs/a.md §2: no heading numbered 2",
        "docs/b.md §1: no such page",
    ]


def test_the_method_and_design_pages_have_the_sections_code_relies_on():
    method, design = section_numbers(DOCS / "method.md"), section_numbers(DOCS / "design.md")
    assert {"2", "3", "5", "5.4", "8", "8.1", "8.2", "8.4", "8.5"} <= method
    assert {"1", "9", "10", "11"} <= design
    facts = (DOCS / "design.md").read_text(encoding="utf-8")
    assert "## 10. Facts" in facts and "OMP_NUM_THREADS" in facts and "gloo" in facts


def test_ci_runs_the_test_command_of_the_readme():
    """README's second set-up command (install and run the tests) is what CI runs, verbatim."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    tests_command = blocks[1].strip()
    assert "pytest" in tests_command, tests_command
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests_command in ci, f".ci/run does not run README's test command: {tests_command}"

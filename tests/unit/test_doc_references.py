"""Every reference to a document resolves to a file inside the repository.

CI clones the repository alone, so whatever a comment, docstring or page cites must be in it:
``docs/<page>.md``, optionally with ``#anchor`` naming one of that page's headings (GitHub's slug
rule), ``README.md#anchor``, or a relative Markdown link. Names of documents kept outside the
repository (the shared reference folder and its API notes and evidence, the architecture and style
briefs) are failures wherever they appear: the facts they held belong in ``docs/``.

This file is not scanned itself: it spells out those names in order to find them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve()

SUFFIXES = frozenset({".py", ".md", ".yml", ".yaml", ".toml"})
NAMES = frozenset({"Makefile", "Dockerfile"})
SKIP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        ".venv-upgrade",
        ".tools",
        "venv",
        "node_modules",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        ".bridge",
        "build",
        "dist",
    }
)
SKIP_PATHS = frozenset({"bench/out"})

# Not preceded by a path or URL character, so ``https://host/docs/x`` is not a repository path.
_START = r"(?<![\w./-])"
OUTSIDE = re.compile(
    _START + r"(?:reference/[^\s)`'\",;]*"
    r"|API-NOTES(?:\.md)?(?: (?:part )?[A-D]\d*\b)?"
    r"|API-EVIDENCE(?:\.md)?"
    r"|\bARCHITECTURE\b(?:\.md)?(?: (?:section )?\d\b)?"
    r"|\bSTYLE\b(?:\.md)?)"
)
DOC_PATH = re.compile(_START + r"(docs/[\w\-/]*[\w\-](?:\.[A-Za-z0-9]+)?)(#[\w\-]+)?")
README_ANCHOR = re.compile(_START + r"(README\.md)(#[\w\-]+)")
MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
URL_SCHEME = re.compile(r"^(?:[A-Za-z][\w+.-]*:|//)")
FENCE = re.compile(r"^\s*(```|~~~)")
ATX = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*\b(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    ref: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.ref}  ({self.reason})"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, lower case,
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a Markdown page offers: its ATX headings (outside fenced code, repeated
    headings numbered ``-1``, ``-2`` as GitHub does) and explicit ``<a id=...>`` tags."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found |= set(HTML_ANCHOR.findall(line))
        match = ATX.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


@dataclass
class Checker:
    """Resolves references against one repository root, reading each target page once."""

    root: Path
    _anchors: dict[Path, set[str]] = field(default_factory=dict)

    def _anchors_of(self, page: Path) -> set[str]:
        if page not in self._anchors:
            self._anchors[page] = anchors(page.read_text(encoding="utf-8", errors="replace"))
        return self._anchors[page]

    def _resolve(self, target: str, anchor: str, bases: list[Path]) -> str | None:
        """None when ``target`` (tried against each base in turn) exists and offers ``anchor``;
        otherwise why not."""
        for base in bases:
            path = (base / target).resolve() if target else base
            if not path.is_relative_to(self.root):
                return "points outside the repository"
            if path.exists():
                break
        else:
            return "no such file in the repository"
        if not anchor:
            return None
        if path.suffix != ".md" or not path.is_file():
            return f"#{anchor} given, but {target} is not a Markdown file"
        if anchor not in self._anchors_of(path):
            return f"no heading with anchor #{anchor} in {path.relative_to(self.root)}"
        return None

    def check(self, rel: str, text: str) -> list[Problem]:
        """Every broken document reference in ``text``, the contents of file ``rel``."""
        here = (self.root / rel).parent
        problems: set[Problem] = set()
        fenced = False
        for number, line in enumerate(text.splitlines(), start=1):
            for match in OUTSIDE.finditer(line):
                problems.add(
                    Problem(rel, number, match.group(0), "outside the repository: cite docs/")
                )
            for match in DOC_PATH.finditer(line):
                ref = match.group(0)
                why = self._resolve(match.group(1), (match.group(2) or "#")[1:], [self.root])
                if why:
                    problems.add(Problem(rel, number, ref, why))
            for match in README_ANCHOR.finditer(line):
                why = self._resolve(match.group(1), match.group(2)[1:], [here, self.root])
                if why:
                    problems.add(Problem(rel, number, match.group(0), why))
            if not rel.endswith(".md"):
                continue
            if FENCE.match(line):
                fenced = not fenced
            if fenced:
                continue
            for match in MD_LINK.finditer(line):
                target = match.group(1)
                if URL_SCHEME.match(target):
                    continue
                path, _, anchor = target.partition("#")
                if path.startswith("/"):
                    why = self._resolve(path.lstrip("/"), anchor, [self.root])
                else:
                    why = self._resolve(path or Path(rel).name, anchor, [here])
                if why:
                    problems.add(Problem(rel, number, target, why))
        return sorted(problems)


def text_files(root: Path) -> Iterator[Path]:
    """The repository's text files that may cite documents, caches and virtualenvs left out."""
    for folder, dirs, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root).as_posix()
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and (f"{rel_folder}/{d}" if rel_folder != "." else d) not in SKIP_PATHS
        )
        for name in sorted(files):
            path = Path(folder) / name
            if (path.suffix in SUFFIXES or name in NAMES) and path.resolve() != SELF:
                yield path


def test_every_document_reference_resolves_inside_the_repository():
    checker = Checker(ROOT)
    problems = [
        problem
        for path in text_files(ROOT)
        for problem in checker.check(
            path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8", errors="replace")
        )
    ]
    if problems:
        pytest.fail(
            f"{len(problems)} document reference(s) do not resolve inside the repository:\n"
            + "\n".join(str(p) for p in problems),
            pytrace=False,
        )


def test_the_checker_reports_broken_references_and_passes_good_ones(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Filtering\n\n```\n## Not a heading\n```\n\n## Filtering\n"
    )
    (tmp_path / "README.md").write_text("# Bridge\n\n## Quick start\n")
    code = "\n".join(
        [
            "# docs/page.md#filtering and docs/page.md#filtering-1 and README.md#quick-start",
            "# docs/page.md#paging",
            "# docs/gone.md",
            "# see API-NOTES A7 and reference/004_x.txt",
            "# ARCHITECTURE section 2",
            "# docs/page.md#not-a-heading",
            "# https://developer.example.com/docs/filtering is a URL, not a path",
        ]
    )
    markdown = "[ok](page.md#filtering) [up](../README.md#quick-start) [bad](#nowhere) [x](gone.md)"

    checker = Checker(tmp_path)
    found = checker.check("bridge/x.py", code) + checker.check("docs/index.md", markdown)

    assert [(p.file, p.line, p.ref) for p in found] == [
        ("bridge/x.py", 2, "docs/page.md#paging"),
        ("bridge/x.py", 3, "docs/gone.md"),
        ("bridge/x.py", 4, "API-NOTES A7"),
        ("bridge/x.py", 4, "reference/004_x.txt"),
        ("bridge/x.py", 5, "ARCHITECTURE section 2"),
        ("bridge/x.py", 6, "docs/page.md#not-a-heading"),
        ("docs/index.md", 1, "#nowhere"),
        ("docs/index.md", 1, "gone.md"),
    ]
    assert "no heading with anchor #paging in docs/page.md" in str(found[0])


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Filtering", "filtering"),
        ("Open questions", "open-questions"),
        ("The API budget, retries and dead letters", "the-api-budget-retries-and-dead-letters"),
        ("Running it in production: docker compose", "running-it-in-production-docker-compose"),
        ("`$filter` and [paging](x.md)", "filter-and-paging"),
        ("ServiceM8 ⇄ Coredination bridge", "servicem8--coredination-bridge"),
    ],
)
def test_anchors_follow_githubs_slug_rule(heading, expected):
    assert slug(heading) == expected

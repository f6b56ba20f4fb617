"""The contract lives in the repo: every citation of docs/design.md names a real section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
CITATION = re.compile(r"design\.md,? (?:section|§) ?(\d+)", re.IGNORECASE)


def _cited_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("gslb", "benchmarks", "tests"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_design_citations_name_real_sections() -> None:
    sections = set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), re.MULTILINE))
    assert sections, "docs/design.md has no numbered sections"
    cited = 0
    for path in _cited_files():
        for number in CITATION.findall(path.read_text(encoding="utf-8")):
            assert number in sections, f"{path.relative_to(ROOT)} cites missing section {number}"
            cited += 1
    assert cited >= 4  # the code and the README do cite it


def test_no_citation_points_outside_the_repo() -> None:
    for path in _cited_files():
        if path.name == "test_docs.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, path.relative_to(ROOT)
        assert "shared/" not in text or path.suffix != ".md", path.relative_to(ROOT)

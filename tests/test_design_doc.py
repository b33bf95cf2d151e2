"""docs/design.md is the design the code cites: every "docs/design.md section N" names a section it has."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cited_design_sections_exist():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.M))
    cited = {}
    for folder in ("construct", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for n in re.findall(r"docs/design\.md,? section (\d+)", path.read_text()):
                cited.setdefault(n, []).append(path.relative_to(ROOT).as_posix())
    assert cited, "no code cites docs/design.md"
    missing = {n: paths for n, paths in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_no_citation_of_the_old_brief():
    stale = [p.relative_to(ROOT).as_posix() for folder in ("construct", "tests", "benchmarks", "tools")
             for p in (ROOT / folder).rglob("*.py") if re.search(r"(?<!docs/)DESIGN\.md", p.read_text())]
    assert not stale, f"cite docs/design.md instead: {stale}"

"""Every relative link and image in the project's Markdown reaches something: the file exists and,
for `page.md#anchor`, that page has the heading (GitHub's anchor rules). The README is a map of
docs/ pages that link to each other and to the repository's files: a moved section or a renamed
file must not leave a newcomer on a 404."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(
    {
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        *REPO.glob("*/README.md"),
        *REPO.glob("tests/*/README.md"),
    }
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$")


def without_code_blocks(text: str) -> list[str]:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S).splitlines()


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, inline-code ticks and punctuation dropped, spaces to
    hyphens, `-1`, `-2` on repeats."""
    seen: dict[str, int] = {}
    ids = set()
    for line in without_code_blocks(page.read_text()):
        if match := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            ids.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return ids


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in without_code_blocks(page.read_text()):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):  # no links inside inline code
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not reachable offline
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{target}: no heading with this anchor in {resolved.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_a_heading(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_maps_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    unmapped = [p.name for p in (REPO / "docs").glob("*.md") if f"](docs/{p.name})" not in readme]
    assert unmapped == [], "docs pages missing from the README's Documentation table"

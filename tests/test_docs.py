"""The README and docs/: every relative link and anchor resolves, and the recipe-key table
lists exactly the rows of farm/keys.py with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from farm import keys

REPOSITORY = Path(__file__).resolve().parent.parent
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings (outside code blocks)."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#+ (.*)", line)):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower().replace("`", ""))
            found.add(text.replace(" ", "-"))
    return found


def test_every_relative_link_and_anchor_resolves():
    assert len(PAGES) >= 7, PAGES
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}: no such file"
            if anchor:
                assert anchor in anchors(linked), f"{page.name}: {target}: no such heading"


def test_the_readme_is_a_front_door():
    assert len((REPOSITORY / "README.md").read_text().splitlines()) <= 300


def test_the_recipe_key_table_lists_every_row_with_its_default():
    text = (REPOSITORY / "docs" / "recipes.md").read_text()
    table = text[text.index("| key | takes |"):].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        rows[name] = (cells[2], cells[3], cells[4])
    assert list(rows) == [k.name for k in keys.KEYS]
    for key in keys.KEYS:
        axis, column, default = rows[key.name]
        assert axis == ("yes" if key.axis else "no"), key.name
        assert column == (f"`{key.column}`" if key.column else "—"), key.name
        if key.default is None:  # `null`, or words: none, required, the prompt as written, ...
            assert default.startswith("`null`") or not default.startswith("`"), key.name
        else:
            literal = re.match(r"`([^`]*)`", default)
            assert literal and yaml.safe_load(literal.group(1) or "''") == key.default, key.name

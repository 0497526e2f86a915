"""The package as a whole: imports go one way, so any module can be read (and changed) on its
own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "farm"


def imports() -> dict[str, set[str]]:
    """Each farm module and the farm modules it imports, at the top or inside a function."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        module = path.stem
        found[module] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("farm"):
                if node.module == "farm":
                    found[module] |= {alias.name for alias in node.names
                                      if (PACKAGE / f"{alias.name}.py").exists()}
                else:
                    found[module].add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found[module] |= {a.name.split(".")[1] for a in node.names
                                  if a.name.startswith("farm.")}
        found[module].discard(module)
    return found


def test_there_are_no_import_circles():
    graph = imports()
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        for other in sorted(graph.get(module, ())):
            if other in trail:
                circles.append(trail[trail.index(other):] + [other])
            elif len(trail) < len(graph):
                visit(other, trail + [other])

    for module in graph:
        visit(module, [module])
    assert not circles, circles[:3]


def test_only_the_manifest_module_writes_sql():
    for path in PACKAGE.glob("*.py"):
        if path.stem != "manifest":
            assert "sqlite3" not in path.read_text(), path.name

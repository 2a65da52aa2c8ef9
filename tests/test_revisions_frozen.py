"""A revision keeps meaning what it meant the day it was written (docs/architecture.md).

The names of the objects a revision creates are written in the revision and passed to
the library (:mod:`cowrieprocessor.db.adoption`, :mod:`cowrieprocessor.db.partitioned_ddl`,
whose revision-only functions take the table and the key's columns as required
keywords); a revision never reads the library's own constants nor relies on its
defaults, so an edit there cannot change what an old revision does. Read from the
source: no database.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
REVISIONS = sorted(VERSIONS.glob("0*.py"))
LIBRARY = ("adoption", "partitioned_ddl")
# library call -> what a revision must pass itself (positional count, or a keyword)
NAMED_BY_THE_CALLER: dict[tuple[str, str], tuple[int, str]] = {
    ("adoption", "assess"): (2, "names"),
    ("adoption", "find_index"): (99, "ours"),
    ("partitioned_ddl", "leaf_keys"): (2, "table"),
}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_there_are_revisions_to_check() -> None:
    assert [p.name[:4] for p in REVISIONS] == ["0001", "0002", "0003", "0004"]


@pytest.mark.parametrize("path", REVISIONS, ids=lambda p: p.name[:4])
def test_a_revision_imports_no_name_from_the_library(path: Path) -> None:
    imported = [
        f"{node.module}: {', '.join(a.name for a in node.names)}"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom)
        and node.module in {f"cowrieprocessor.db.{m}" for m in LIBRARY}
    ]
    assert imported == [], "state the names in the revision and pass them in"


@pytest.mark.parametrize("path", REVISIONS, ids=lambda p: p.name[:4])
def test_a_revision_reads_no_constant_of_the_library(path: Path) -> None:
    read = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in LIBRARY
        and node.attr.isupper()
    ]
    assert read == []


@pytest.mark.parametrize("path", REVISIONS, ids=lambda p: p.name[:4])
def test_a_revision_passes_its_own_names_where_the_library_has_defaults(path: Path) -> None:
    relying = []
    for node in ast.walk(_tree(path)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in NAMED_BY_THE_CALLER
        ):
            continue
        positions, keyword = NAMED_BY_THE_CALLER[(node.func.value.id, node.func.attr)]
        if len(node.args) < positions and keyword not in {k.arg for k in node.keywords}:
            relying.append(f"{node.func.value.id}.{node.func.attr} (line {node.lineno})")
    assert relying == [], "pass the revision's own names, not the library's defaults"

"""The ``sql`` package stays one place a newcomer can read: its namespace is its
interface (every name a caller uses as ``sql.X`` is there), its modules import one
another in one direction, and "has a snapshot" has one definition each way.
No database needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa

from cowrieprocessor.backfill import sql

PACKAGE = Path(sql.__file__).parent
ROOT = PACKAGE.parents[2]
# Each module of the package, and the modules of the package it may import: a layer
# imports only the layers before it.
LAYERS = {
    "rules": set(),
    "record": set(),
    "statistics": {"walk"},
    "stripes": {"walk"},
    "walk": {"rules"},
    "blocks": {"rules", "record"},
    "resolve_pg": {"rules", "walk", "record"},
    "resolve_pg_key": {"rules", "walk", "record", "resolve_pg"},
    "resolve_sqlite": {"rules", "walk"},
    "clear": {"rules", "walk"},
    "offline": {"rules", "record", "resolve_pg", "resolve_sqlite", "statistics"},
    "reports": {"rules", "walk"},
}
# Outside the package, a module of it may import only these.
OUTSIDE = {
    "__future__",
    "sqlalchemy",
    "cowrieprocessor.backfill.json_storage",
    "cowrieprocessor.backfill.progress",
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_module_of_the_package_is_in_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


def test_the_modules_import_each_other_in_one_direction() -> None:
    prefix = "cowrieprocessor.backfill.sql."
    for module, allowed in LAYERS.items():
        found = imports(PACKAGE / f"{module}.py")
        inside = {name.removeprefix(prefix) for name in found if name.startswith(prefix)}
        assert inside <= allowed, (module, inside - allowed)
        outside = {name for name in found if not name.startswith(prefix)}
        assert outside <= OUTSIDE, (module, outside - OUTSIDE)


def test_every_name_callers_use_as_sql_x_is_in_the_namespace() -> None:
    aliases = {"sql", "backfill_sql", "product_sql"}  # as the callers import the package
    used = set()
    for folder in ("cowrieprocessor", "migrations", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if PACKAGE in path.parents or path == Path(__file__):
                continue
            tree = ast.parse(path.read_text())
            if not any(
                isinstance(node, ast.ImportFrom)
                and node.module == "cowrieprocessor.backfill"
                and any(alias.name == "sql" for alias in node.names)
                for node in ast.walk(tree)
            ):
                continue
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                ):
                    used.add(node.attr)
    assert used, "found no caller"
    assert used <= set(sql.__all__), used - set(sql.__all__)
    assert all(hasattr(sql, name) for name in sql.__all__)


def test_has_a_snapshot_is_defined_once_each_way() -> None:
    """A session has a snapshot (coverage, verify) when it has a source_ip: the negation of
    the catch-up's condition; it has snapshot values (status, clear) when any of the
    walk's five columns has one. The reports count with those very fragments."""
    assert sql.CATCHUP_NEEDS.replace("IS NULL", "IS NOT NULL") == sql.HAS_SOURCE_IP
    assert sql.NEEDS_SNAPSHOT.replace("IS NULL", "IS NOT NULL") == sql.HAS_SNAPSHOT
    assert sql.HAS_SOURCE_IP in str(sql.COUNT_WITH_SNAPSHOT)
    assert sql.HAS_SOURCE_IP in str(sql.SNAPSHOT_SAMPLE)
    assert sql.HAS_SNAPSHOT in str(sql.COUNT_WITH_VALUES)
    assert sql.HAS_SNAPSHOT in str(sql.null_snapshots_in_range(True, True))
    assert sql.NEEDS_SNAPSHOT in str(sql.LEAF_COUNTS)
    assert isinstance(sql.RUN_COLUMNS, sa.Select)

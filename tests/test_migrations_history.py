"""The Alembic history itself: pytest-alembic's built-in checks on both dialects,
plus round trips, offline SQL and the single head, through the real ``alembic`` command.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pytest_alembic.tests import (  # the floor for any Alembic project
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.runners import run_alembic

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]

EXPECTED_TABLES = {"asn_inventory", "ip_inventory", "session_summaries", "raw_events"}


def _tables(url: str) -> set[str]:
    eng = create_engine_from_url(url)
    try:
        return set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_upgrade_head_then_downgrade_base_leaves_an_empty_schema(db_url: str) -> None:
    up = run_alembic(db_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert _tables(db_url) >= EXPECTED_TABLES

    down = run_alembic(db_url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _tables(db_url) <= {"alembic_version"}

    again = run_alembic(db_url, "upgrade", "head")
    assert again.returncode == 0, again.stderr


def test_alembic_heads_shows_exactly_one_head(sqlite_url: str) -> None:
    heads = run_alembic(sqlite_url, "heads")
    assert heads.returncode == 0, heads.stderr
    assert len([line for line in heads.stdout.splitlines() if line.strip()]) == 1
    assert "(head)" in heads.stdout


@pytest.mark.parametrize("dialect_url", ["sqlite:///unused.sqlite", "postgresql://u:p@h/db"])
def test_offline_sql_renders_without_a_database(dialect_url: str) -> None:
    out = run_alembic(dialect_url, "upgrade", "head", "--sql")
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE session_summaries" in out.stdout
    assert "snapshot_country" in out.stdout
    assert "p@h" not in out.stdout + out.stderr

"""Adopting a database that cowrieprocessor's own schema code built before Alembic:
``alembic stamp 0001_baseline`` then ``alembic upgrade head`` (README.md).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.adoption import CK_NAME, COVERING_INDEX, FK_NAME
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.runners import run_alembic
from cowrieprocessor.testing.seed import add_asn, add_ip, add_session, migrate, snapshots

LEGACY_COLUMNS = {
    "postgresql": [
        "source_ip VARCHAR(45)",
        "snapshot_asn INTEGER",
        "snapshot_country VARCHAR(2)",
        "snapshot_ip_type TEXT",
        "enrichment_at TIMESTAMP WITH TIME ZONE",
    ],
    "sqlite": [
        "source_ip VARCHAR(45)",
        "snapshot_asn INTEGER",
        "snapshot_country VARCHAR(2)",
        "snapshot_ip_type TEXT",
        "enrichment_at DATETIME",
    ],
}


def legacy_database(url: str, *, with_columns: int) -> sa.Engine:
    """The pre-Alembic schema: 0001's tables, no alembic_version, and optionally the
    first ``with_columns`` snapshot columns added by the old schema code (no constraints)."""
    migrate(url, "0001_baseline")
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        for column in LEGACY_COLUMNS[engine.dialect.name][:with_columns]:
            conn.execute(sa.text(f"ALTER TABLE session_summaries ADD COLUMN {column}"))
        if with_columns >= 2:
            conn.execute(
                sa.text(
                    "CREATE INDEX ix_session_summaries_snapshot_asn ON session_summaries "
                    "(snapshot_asn)"
                )
            )
        add_asn(conn, 4134)
        add_ip(conn, "1.1.1.1", asn=4134, country="CN")
        conn.execute(
            sa.text("INSERT INTO session_summaries (session_id, enrichment) VALUES ('new', :e)"),
            {"e": '{"session_metadata": {"source_ip": "1.1.1.1"}}'},
        )
    return engine


def test_stamp_then_upgrade_adopts_a_database_without_the_columns(db_url: str) -> None:
    engine = legacy_database(db_url, with_columns=0)
    stamp = run_alembic(db_url, "stamp", "0001_baseline")
    assert stamp.returncode == 0, stamp.stderr
    up = run_alembic(db_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert snapshots(engine)["new"][:3] == ("1.1.1.1", 4134, "CN")
    engine.dispose()


@pytest.mark.parametrize("with_columns", [2, 5])
def test_adoption_when_the_snapshot_columns_already_exist(db_url: str, with_columns: int) -> None:
    engine = legacy_database(db_url, with_columns=with_columns)
    with engine.begin() as conn:
        if with_columns == 5:  # old data that breaks the new rules is kept, not rewritten
            add_session(conn, "bad_country", snapshot_country="cn", snapshot_asn=7)
            add_session(conn, "bad_ip", source_ip="9.9.9.9")
    assert run_alembic(db_url, "stamp", "0001_baseline").returncode == 0
    up = run_alembic(db_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr

    got = snapshots(engine)
    assert got["new"][:3] == ("1.1.1.1", 4134, "CN")
    inspector = sa.inspect(engine)
    assert {c["name"] for c in inspector.get_columns("session_summaries")} >= {
        "source_ip",
        "snapshot_asn",
        "snapshot_country",
        "snapshot_ip_type",
        "enrichment_at",
    }
    assert COVERING_INDEX in {ix["name"] for ix in inspector.get_indexes("session_summaries")}
    if with_columns == 5:
        assert got["bad_country"][1:3] == (7, "cn")
        assert got["bad_ip"][0] == "9.9.9.9"

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            state: dict[str, bool] = dict(
                conn.execute(
                    sa.text(
                        "SELECT conname, convalidated FROM pg_constraint "
                        "WHERE conrelid = 'session_summaries'::regclass AND contype IN ('c', 'f')"
                    )
                ).all()
            )
        fk, ck = (
            FK_NAME,
            CK_NAME,
        )
        if with_columns == 5:
            assert state == {fk: False, ck: False}
            assert "left NOT VALID: 1 existing rows violate it (e.g. session_id 'bad_ip')" in (
                up.stderr
            )
            assert "(e.g. session_id 'bad_country')" in up.stderr
        else:
            assert state == {fk: True, ck: True}
    elif with_columns == 5:
        assert "already exists without constraint" in up.stderr
    engine.dispose()

"""No password anywhere: not in the ``alembic`` command's output, its errors, the status
file or the progress table, whatever the run does (fails half way, is refused a hostile
knob value or a connection, or completes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.db.engine import create_engine_from_url
from tests.helpers import run_alembic
from tests.reliability.datasets import Dataset

PASSWORD = "p@ss:w/rd?#%&= x'\"1"  # every character a URL parser cares about


def _assert_no_password(secret_url: str, *texts: str) -> None:
    escaped = secret_url.split("postgres:", 1)[1].rsplit("@", 1)[0]
    for text in texts:
        for fragment in (PASSWORD, escaped, "p@ss", "w/rd", "rd?#"):
            assert fragment not in text, f"{fragment!r} leaked in: ...{text[-300:]}"


@pytest.mark.postgres
def test_no_password_in_alembic_output_errors_status_file_or_progress_table(
    pg_small: Dataset, tmp_path: Path
) -> None:
    url = pg_small.clone()
    secret_url = sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    engine = create_engine_from_url(url)
    status = tmp_path / "status.json"
    env = {"COWRIE_BACKFILL_STATUS_FILE": str(status)}
    texts: list[str] = []
    # a failure half way: row locks on the later sessions outlast every retry
    locker = engine.connect()
    locker.execute(
        sa.text(
            "SELECT 1 FROM session_summaries WHERE session_id > (SELECT session_id "
            "FROM session_summaries ORDER BY session_id OFFSET 250 LIMIT 1) FOR UPDATE"
        )
    )
    failed = run_alembic(
        secret_url,
        "upgrade",
        "head",
        x={"batch_size": "100", "lock_timeout": "50", "max_retries": "0"},
        env=env,
    )
    locker.rollback()
    locker.close()
    assert failed.returncode != 0 and "lock timeout" in failed.stderr, failed.stderr
    texts += [failed.stderr, failed.stdout, status.read_text()]
    # a hostile knob value: refused by name before it is used; and a refused connection
    hostile = run_alembic(
        secret_url, "upgrade", "head", x={"statement_timeout": "0; DROP TABLE ip_inventory"}
    )
    assert hostile.returncode != 0
    assert "statement_timeout='0; DROP TABLE ip_inventory'" in hostile.stderr
    assert sa.inspect(engine).has_table("ip_inventory")
    refused = sa.make_url(secret_url).set(port=1).render_as_string(hide_password=False)
    unreachable = run_alembic(refused, "upgrade", "head")
    assert unreachable.returncode != 0
    texts += [hostile.stderr, hostile.stdout, unreachable.stderr, unreachable.stdout]
    # the run that completes (resuming), and the progress table it leaves
    ok = run_alembic(secret_url, "upgrade", "head", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "Database: postgresql+psycopg2://postgres:***@" in ok.stderr
    texts += [ok.stderr, ok.stdout, status.read_text()]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {PROGRESS_TABLE}")).all()
    table = json.dumps([list(row) for row in rows], default=str)
    texts.append(table)
    _assert_no_password(secret_url, *texts)
    assert "://" not in status.read_text() + table
    engine.dispose()

"""Clearing everything (``cowrie-db clear --all``, and a downgrade without a record)."""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.sql.rules import HAS_SNAPSHOT
from cowrieprocessor.backfill.sql.walk import SESSIONS_TABLE, in_text, range_predicate


def null_snapshots_in_range(
    has_lo: bool, has_hi: bool, column: str = "s.session_id", table: str = SESSIONS_TABLE
) -> TextClause:
    """NULL the five columns in one range, touching only rows that have a value."""
    return text(
        f"""UPDATE {in_text(table)} AS s SET
    source_ip = NULL, snapshot_asn = NULL, snapshot_country = NULL,
    snapshot_ip_type = NULL, enrichment_at = NULL
WHERE {range_predicate(has_lo, has_hi, column)} AND {HAS_SNAPSHOT}"""
    )

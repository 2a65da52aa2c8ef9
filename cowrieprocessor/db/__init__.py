"""Database access: engine factory, session maker and ORM models."""

from cowrieprocessor.db.engine import (
    create_engine_from_settings,
    create_engine_from_url,
    create_session_maker,
)

__all__ = ["create_engine_from_settings", "create_engine_from_url", "create_session_maker"]

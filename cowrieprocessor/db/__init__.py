"""Database access: the engine factory, the ORM models, adoption of existing schemas."""

from cowrieprocessor.db.engine import create_engine_from_url

__all__ = ["create_engine_from_url"]

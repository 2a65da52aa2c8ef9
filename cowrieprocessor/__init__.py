"""cowrieprocessor: the database-migration side (schema history and snapshot backfill)."""

__version__ = "0.1.0"

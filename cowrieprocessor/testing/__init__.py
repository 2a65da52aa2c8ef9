"""Test and benchmark support that ships with the package, as alembic ships alembic/testing."""

"""Alembic migrations of the store (applied at startup and by `inferd db upgrade`)."""

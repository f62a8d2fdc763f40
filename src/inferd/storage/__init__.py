"""The usage and conversation store: SQLAlchemy 2 (async) over SQLite or PostgreSQL."""

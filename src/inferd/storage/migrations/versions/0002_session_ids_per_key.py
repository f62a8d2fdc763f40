"""session ids in the namespace of an API key: up to 256 characters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

A session is stored as `key_id/session_id` (see inferd.api.sessions.scoped_session): a key id
and a 128-character session id no longer fit 128 characters. SQLite does not enforce the
length of a VARCHAR, so only PostgreSQL needs the columns widened; existing sessions keep
their ids (the namespace of requests made without a key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("sessions", "id", type_=sa.String(256), existing_nullable=False)
    op.alter_column("messages", "session_id", type_=sa.String(256), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("messages", "session_id", type_=sa.String(128), existing_nullable=False)
    op.alter_column("sessions", "id", type_=sa.String(128), existing_nullable=False)

"""a conversation's title: sessions.title

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

A session's owner can name it (PATCH /v1/conversations/{id}); sessions stored before have
none, and lists show the start of their first message instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("title", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("title")

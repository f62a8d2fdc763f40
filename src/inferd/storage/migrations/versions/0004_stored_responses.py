"""a stored Responses API object beside its answer: messages.response

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

GET /v1/responses/{id} returns a stored response as it was sent (its output items: the
reasoning, the message, the function calls; its usage and status). Answers stored before
have none, and are returned as a message item alone, as they were.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("response", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("response")

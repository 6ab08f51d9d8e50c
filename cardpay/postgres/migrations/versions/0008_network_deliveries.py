"""Network deliveries: each card-network webhook id with the answer it got, for idempotency.

A delivery is recorded in the transaction of the message's effect: a repeat of the id finds it
and gets the same answer; the same id with another body (other SHA-256) is refused.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "network_deliveries",
        sa.Column("webhook_id", sa.Text, primary_key=True),
        sa.Column("body_sha256", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("response", JSONB, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("network_deliveries")

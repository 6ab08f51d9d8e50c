"""Classified chain activity (observer mode views) and the listener's unfinalized block hashes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_activity",
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("log_index", sa.Integer, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx_hash", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(78, 0), nullable=False),
        sa.Column("cardholder", sa.Text),
        sa.PrimaryKeyConstraint("chain_id", "block_hash", "log_index"),
        sa.CheckConstraint("amount >= 0", name="chain_activity_amount_non_negative"),
    )
    op.create_index("chain_activity_block", "chain_activity", ["chain_id", "block_number"])
    op.create_index("chain_activity_cardholder", "chain_activity", ["cardholder", "block_time"])
    op.create_index(
        "events_evidence_block_hash", "events",
        [sa.text("(data #>> '{payload,evidence,block_hash}')")],
        postgresql_where=sa.text("type IN ('PaymentSpent', 'PaymentRefunded')"),
    )
    op.create_table(
        "chain_blocks",
        sa.Column("listener", sa.Text, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("parent_hash", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("listener", "block_number"),
    )


def downgrade() -> None:
    op.drop_table("chain_blocks")
    op.drop_index("events_evidence_block_hash", table_name="events")
    op.drop_table("chain_activity")

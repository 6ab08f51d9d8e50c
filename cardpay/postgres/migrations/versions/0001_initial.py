"""Event store, outbox, consumer positions, chain cursor, quarantine, payments read model.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

AMOUNT = sa.Numeric(78, 0)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    default = None if nullable else sa.func.now()
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    # Global position: a sequence consumed only under LOCK TABLE events IN EXCLUSIVE MODE, so
    # positions become visible in commit order (see docs/adr/0002-event-store-ordering.md).
    op.create_table(
        "events",
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        _ts("recorded_at"),
        sa.PrimaryKeyConstraint("stream_id", "version"),
        sa.UniqueConstraint("position", name="events_position_key"),
        sa.CheckConstraint("version >= 1", name="events_version_positive"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        _ts("created_at"),
        _ts("published_at", nullable=True),
    )
    op.create_index(
        "outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_table(
        "consumer_positions",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("consumer", "source"),
    )
    op.create_table(
        "processed_commands",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("outcome", sa.Text, nullable=False),
        _ts("processed_at"),
    )
    op.create_table(
        "chain_cursor",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.Text, nullable=False),
        _ts("updated_at"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("source", "key", name="quarantine_source_key"),
    )
    op.create_table(
        "expected_refunds",
        sa.Column("tx_hash", sa.Text, nullable=False),
        sa.Column("to_address", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("payment_id", sa.Text, nullable=False),
        sa.Column("refund_id", sa.Text, nullable=False),
        sa.Column("matched_by", sa.Text),
        sa.PrimaryKeyConstraint("payment_id", "refund_id"),
        sa.CheckConstraint("amount > 0", name="expected_refunds_amount_positive"),
    )
    op.create_index("expected_refunds_lookup", "expected_refunds", ["tx_hash", "to_address"])
    op.create_table(
        "rm_payments",
        sa.Column("payment_id", sa.Text, primary_key=True),
        sa.Column("account", sa.Text),
        sa.Column("currency", sa.Text),
        sa.Column("decimals", sa.Integer),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("authorized", AMOUNT),
        sa.Column("spent", AMOUNT, nullable=False, server_default="0"),
        sa.Column("cleared", AMOUNT),
        sa.Column("refunded", AMOUNT, nullable=False, server_default="0"),
        sa.Column("spend_tx", sa.Text),
        sa.Column("last_version", sa.Integer, nullable=False),
        _ts("updated_at"),
        sa.CheckConstraint("refunded <= spent", name="rm_payments_refund_within_spend"),
    )


def downgrade() -> None:
    for table in (
        "rm_payments",
        "expected_refunds",
        "quarantine",
        "chain_cursor",
        "processed_commands",
        "consumer_positions",
        "outbox",
        "events",
    ):
        op.drop_table(table)

"""Settlement batches: one row per settlement day and currency, as the settlement saga leaves it,
and their items: one row per message the network counts, kept once per event (stream:version).

The saga's instance (`saga_instances`) is the state that decides; this table is what finance
reads (`cardpay settlements`): our figures, the report's, the status and the payout window.
Written by the saga's unit of work; a row only moves to a newer saga version (`revision`).
Amounts are the report's: fiat minor units.

Written on 0013 while 0014 was being added in parallel: the merge re-chains it.

Revision ID: 0015
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlement_batches",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("credit", sa.BigInteger, nullable=False),
        sa.Column("debit", sa.BigInteger, nullable=False),
        sa.Column("report", JSONB),
        sa.Column("window", sa.Integer, nullable=False),
        sa.Column("payment_ids", JSONB, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", "currency"),
    )
    op.create_table(
        "settlement_items",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("item_key", sa.Text, nullable=False),
        sa.Column("payment_id", sa.Text),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("credit", sa.BigInteger, nullable=False),
        sa.Column("debit", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("day", "currency", "item_key"),
    )


def downgrade() -> None:
    op.drop_table("settlement_items")
    op.drop_table("settlement_batches")

"""The read side for finance and ops: the `payments` read model gets the whole lifecycle (the
network's figures, merchant and MCC, the hold's expiry, refund transactions, settlement, times)
and a `daily` read model per day and token.

Existing rows keep their chain-side figures and get zeros and NULLs for the new ones: run
`cardpay projections reset payments` (then `cardpay project`) to fill them from the feed.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

AMOUNT = sa.Numeric(78, 0)
AMOUNTS = ("held", "posted", "network_cleared", "reversed", "released", "over_cleared",
           "returned", "settled")
TIMES = ("expires_at", "first_at", "authorized_at", "cleared_at", "settled_at", "last_at")
DAILY = ("approved", "declined", "authorized", "cleared_payments", "cleared", "returned", "spent",
         "refunded", "settled_payments", "settled")


def upgrade() -> None:
    op.add_column("rm_payments", sa.Column("network_status", sa.Text, nullable=False,
                                           server_default="none"))
    op.add_column("rm_payments", sa.Column("merchant", sa.Text))
    op.add_column("rm_payments", sa.Column("mcc", sa.Text))
    for name in AMOUNTS:
        op.add_column("rm_payments", sa.Column(name, AMOUNT, nullable=False, server_default="0"))
    op.add_column("rm_payments", sa.Column("refund_txs", JSONB, nullable=False,
                                           server_default="[]"))
    op.add_column("rm_payments", sa.Column("settlement_batch", sa.Text))
    for name in TIMES:
        op.add_column("rm_payments", sa.Column(name, sa.DateTime(timezone=True)))
    op.create_index("rm_payments_open_holds", "rm_payments", ["account", "expires_at"],
                    postgresql_where=sa.text("held > 0"))
    op.create_index("rm_payments_by_day", "rm_payments", ["currency", "first_at"])
    op.create_table(
        "rm_daily",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        *(sa.Column(name, AMOUNT, nullable=False, server_default="0") for name in DAILY),
        sa.PrimaryKeyConstraint("day", "currency"),
    )


def downgrade() -> None:
    op.drop_table("rm_daily")
    op.drop_index("rm_payments_by_day", "rm_payments")
    op.drop_index("rm_payments_open_holds", "rm_payments")
    for name in ("network_status", "merchant", "mcc", *AMOUNTS, "refund_txs",
                 "settlement_batch", *TIMES):
        op.drop_column("rm_payments", name)

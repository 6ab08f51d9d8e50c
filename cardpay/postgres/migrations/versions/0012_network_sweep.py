"""The network sweep: parked clearings watched, due holds found by index.

`network_parked_clearings` lists the payments with a clearing parked before its authorization
(fed from the `ClearingParked` events after the sweep's position, which `events_clearing_parked`
finds without scanning the log); `ledger_transfers_pending_due` finds the pending holds whose
timeout passed without reading the resolved ones.

Written on 0010 while 0011 was being added in parallel: the merge re-chains it onto 0011.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "network_parked_clearings",
        sa.Column("payment_id", sa.Text, primary_key=True),
        sa.Column("parked_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("exception_at", sa.DateTime(timezone=True)),
    )
    op.create_index("events_clearing_parked", "events", ["position"],
                    postgresql_where=sa.text("type = 'ClearingParked'"))
    op.create_index("ledger_transfers_pending_due", "ledger_transfers", ["expires_at"],
                    postgresql_where=sa.text("pending_status = 'pending'"))


def downgrade() -> None:
    op.drop_index("ledger_transfers_pending_due", table_name="ledger_transfers")
    op.drop_index("events_clearing_parked", table_name="events")
    op.drop_table("network_parked_clearings")

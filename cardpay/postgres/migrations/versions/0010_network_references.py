"""Network references and settlement reports.

`payment_references` finds the payment a later message is about when the message names it only
indirectly (a return by its clearing id, a return reversal by its return id). `settlement_reports`
keeps each daily settlement report as the network sent it, once per report id, for the
settlement and reconciliation side to match.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_references",
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("payment_id", sa.Text, nullable=False),
    )
    op.create_table(
        "settlement_reports",
        sa.Column("report_id", sa.Text, primary_key=True),
        sa.Column("settlement_date", sa.Date, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("report", JSONB, nullable=False),
    )
    op.create_index("settlement_reports_by_day", "settlement_reports",
                    ["settlement_date", "currency"])


def downgrade() -> None:
    op.drop_table("settlement_reports")
    op.drop_table("payment_references")

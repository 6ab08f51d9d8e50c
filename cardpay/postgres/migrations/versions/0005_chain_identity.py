"""Chain identity: the chain id and genesis hash each listener indexes.

A listener's cursor, kept block hashes and payments only make sense on the chain they were read
from. A node on another chain (another chain id, or the same id with another genesis block: a
restarted dev node) is refused at start until `cardpay listener reset` retracts the old chain.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_identity",
        sa.Column("listener", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("genesis_hash", sa.Text, nullable=False),
        sa.Column("first_block", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("chain_identity")

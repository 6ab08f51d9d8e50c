"""Our own transactions: nonces, what each nonce is for, every signed hash (issue 8).

- `onchain_nonces`: the next nonce per sender, taken under its row lock (initialised once from
  the node's pending nonce), so no two workers share a nonce and a crash never skips one;
- `onchain_slots`: one row per (sender, nonce): the call, its gas limit, its purpose and `meta`
  (a spend's payment id), `pending` until a transaction of that nonce is mined (`mined`) or the
  nonce went to a transaction we did not record (`lost`); the partial index is what the
  adapters poll;
- `onchain_transactions`: every signed transaction (the first and each replacement) with its
  raw bytes, recorded and committed before it is broadcast, so a restart can broadcast the very
  same bytes again;
- `onchain_requests`: which effect request (and attempt) a slot does; its primary key is why a
  request can never get a second transaction, even from two workers at once.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

AMOUNT = sa.Numeric(78, 0)


def upgrade() -> None:
    op.create_table(
        "onchain_nonces",
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("next_nonce", sa.BigInteger, nullable=False),
        sa.CheckConstraint("next_nonce >= 0", name="onchain_nonces_not_negative"),
    )
    op.create_table(
        "onchain_slots",
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("to_address", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("gas", sa.BigInteger, nullable=False),
        sa.Column("meta", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("mined_hash", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("settled_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("sender", "nonce"),
        sa.CheckConstraint("status IN ('pending', 'mined', 'reverted', 'lost')",
                           name="onchain_slots_status"),
    )
    op.create_index("onchain_slots_pending", "onchain_slots", ["sender", "purpose", "nonce"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.execute("CREATE INDEX onchain_slots_by_payment ON onchain_slots ((meta->>'payment_id')) "
               "WHERE purpose = 'submit_spend'")
    op.create_table(
        "onchain_transactions",
        sa.Column("tx_hash", sa.Text, primary_key=True),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("gas", sa.BigInteger, nullable=False),
        sa.Column("max_fee", AMOUNT, nullable=False),
        sa.Column("priority_fee", AMOUNT, nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sender", "nonce"], ["onchain_slots.sender", "onchain_slots.nonce"],
                                name="onchain_transactions_slot"),
    )
    op.create_index("onchain_transactions_by_slot", "onchain_transactions", ["sender", "nonce"])
    op.create_table(
        "onchain_requests",
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "attempt"),
        sa.ForeignKeyConstraint(["sender", "nonce"], ["onchain_slots.sender", "onchain_slots.nonce"],
                                name="onchain_requests_slot"),
    )
    op.create_index("onchain_requests_by_slot", "onchain_requests", ["sender", "nonce"])


def downgrade() -> None:
    op.drop_index("onchain_requests_by_slot", table_name="onchain_requests")
    op.drop_table("onchain_requests")
    op.drop_index("onchain_transactions_by_slot", table_name="onchain_transactions")
    op.drop_table("onchain_transactions")
    op.execute("DROP INDEX onchain_slots_by_payment")
    op.drop_index("onchain_slots_pending", table_name="onchain_slots")
    op.drop_table("onchain_slots")
    op.drop_table("onchain_nonces")

"""The card registry, and the Safes' token balances and daily allowances as indexed from the chain.

An authorization is decided from these rows alone (no node call on the hot path): `cards` is
locked per authorization (SELECT ... FOR UPDATE), `safe_balances` and `safe_allowances` hold the
current state next to the reading they started from, and every log that moved them is a row
keyed by block hash (`safe_balance_moves`, `safe_allowance_changes`), so a reorg undoes exactly
the orphaned blocks' effects. `card_authorizations` counts authorizations for the velocity rule.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

AMOUNT = sa.Numeric(78, 0)


def _now() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                     server_default=sa.func.now())


def _allowance(prefix: str = "") -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column(f"{prefix}balance", AMOUNT, nullable=False),
        sa.Column(f"{prefix}max_refill", AMOUNT, nullable=False),
        sa.Column(f"{prefix}refill", AMOUNT, nullable=False),
        sa.Column(f"{prefix}period", sa.BigInteger, nullable=False),
        sa.Column(f"{prefix}stamp", sa.BigInteger, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "cards",
        sa.Column("card_id", sa.Text, primary_key=True),
        sa.Column("safe", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("decimals", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("roles_module", sa.Text),
        sa.Column("blocked_mccs", ARRAY(sa.Integer), nullable=False, server_default="{}"),
        sa.Column("velocity_limit", sa.Integer),
        sa.Column("velocity_window_seconds", sa.Integer, nullable=False, server_default="3600"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        _now(),
        sa.CheckConstraint("status IN ('active', 'frozen', 'closed')", name="cards_status"),
        sa.CheckConstraint("safe = lower(safe) AND token = lower(token)", name="cards_lowercase"),
        sa.CheckConstraint("velocity_limit IS NULL OR velocity_limit >= 0",
                           name="cards_velocity_limit"),
        sa.CheckConstraint("velocity_window_seconds > 0", name="cards_velocity_window"),
    )
    op.create_index("cards_safe_token", "cards", ["safe", "token"])
    op.create_table(
        "card_authorizations",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("card_id", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("card_authorizations_card_at", "card_authorizations", ["card_id", "at"])
    op.create_table(
        "safe_balances",
        sa.Column("safe", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("balance", AMOUNT, nullable=False),
        sa.Column("read_balance", AMOUNT, nullable=False),
        sa.Column("read_block", sa.BigInteger, nullable=False),
        sa.Column("read_block_hash", sa.Text, nullable=False),
        sa.Column("as_of_block", sa.BigInteger, nullable=False),
        sa.Column("as_of_block_hash", sa.Text, nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("safe", "token"),
    )
    op.create_table(
        "safe_balance_moves",
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("log_index", sa.Integer, nullable=False),
        sa.Column("safe", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("delta", AMOUNT, nullable=False),
        sa.PrimaryKeyConstraint("block_hash", "log_index", "safe"),
    )
    op.create_index("safe_balance_moves_latest", "safe_balance_moves",
                    ["safe", "token", "block_number"])
    op.create_table(
        "safe_allowances",
        sa.Column("safe", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("roles_module", sa.Text, nullable=False),
        *_allowance(),
        *_allowance("read_"),
        sa.Column("read_block", sa.BigInteger, nullable=False),
        sa.Column("read_block_hash", sa.Text, nullable=False),
        sa.Column("as_of_block", sa.BigInteger, nullable=False),
        sa.Column("as_of_block_hash", sa.Text, nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("safe", "token"),
    )
    op.create_index("safe_allowances_module", "safe_allowances", ["roles_module"])
    op.create_table(
        "safe_allowance_changes",
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("log_index", sa.Integer, nullable=False),
        sa.Column("safe", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        *_allowance(),
        sa.PrimaryKeyConstraint("block_hash", "log_index", "safe", "token"),
    )
    op.create_index("safe_allowance_changes_latest", "safe_allowance_changes",
                    ["safe", "token", "block_number"])


def downgrade() -> None:
    for table in ("safe_allowance_changes", "safe_allowances", "safe_balance_moves",
                  "safe_balances", "card_authorizations", "cards"):
        op.drop_table(table)

"""Table definitions for SQLAlchemy Core queries. The migrations in cardpay/postgres/migrations create them.

Token amounts are NUMERIC(78, 0): a uint256 in base units, exact.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()
Amount = Numeric(78, 0)

events = Table(
    "events",
    metadata,
    Column("stream_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, Identity(always=True), nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("stream_id", "version"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("topic", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
)

consumer_positions = Table(
    "consumer_positions",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "source"),
)

feed_identity = Table(
    "feed_identity",
    metadata,
    Column("consumer", Text, primary_key=True),
    Column("topic", Text, nullable=False),
    Column("topic_id", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

processed_commands = Table(
    "processed_commands",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("outcome", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("block_hash", Text),
    # ^ the block of the chain log behind the command (NULL for commands from elsewhere)
)

chain_cursor = Table(
    "chain_cursor",
    metadata,
    Column("name", Text, primary_key=True),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("source", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("block_hash", Text),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    UniqueConstraint("source", "key"),
)

expected_refunds = Table(
    "expected_refunds",
    metadata,
    Column("tx_hash", Text, nullable=False),
    Column("to_address", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("payment_id", Text, nullable=False),
    Column("refund_id", Text, nullable=False),
    Column("matched_by", Text),
    Column("matched_block", Text),
    PrimaryKeyConstraint("payment_id", "refund_id", "tx_hash"),
)

unmatched_transfers = Table(
    "unmatched_transfers",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("tx_hash", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("command", JSONB, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("resolved_at", DateTime(timezone=True)),
)
Index("expected_refunds_lookup", expected_refunds.c.tx_hash, expected_refunds.c.to_address)

rm_payments = Table(
    "rm_payments",
    metadata,
    Column("payment_id", Text, primary_key=True),
    Column("account", Text),
    Column("currency", Text),
    Column("decimals", Integer),
    Column("status", Text, nullable=False),
    Column("authorized", Amount),
    Column("spent", Amount, nullable=False, server_default="0"),
    Column("cleared", Amount),
    Column("refunded", Amount, nullable=False, server_default="0"),
    Column("spend_tx", Text),
    Column("last_version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # the whole lifecycle (migration 0017)
    Column("network_status", Text, nullable=False, server_default="none"),
    Column("merchant", Text),
    Column("mcc", Text),
    Column("held", Amount, nullable=False, server_default="0"),
    Column("posted", Amount, nullable=False, server_default="0"),
    Column("network_cleared", Amount, nullable=False, server_default="0"),
    Column("reversed", Amount, nullable=False, server_default="0"),
    Column("released", Amount, nullable=False, server_default="0"),
    Column("over_cleared", Amount, nullable=False, server_default="0"),
    Column("returned", Amount, nullable=False, server_default="0"),
    Column("expires_at", DateTime(timezone=True)),
    Column("refund_txs", JSONB, nullable=False, server_default="[]"),
    Column("settlement_batch", Text),
    Column("settled", Amount, nullable=False, server_default="0"),
    Column("first_at", DateTime(timezone=True)),
    Column("authorized_at", DateTime(timezone=True)),
    Column("cleared_at", DateTime(timezone=True)),
    Column("settled_at", DateTime(timezone=True)),
    Column("last_at", DateTime(timezone=True)),
    Index("rm_payments_open_holds", "account", "expires_at", postgresql_where=text("held > 0")),
    Index("rm_payments_by_day", "currency", "first_at"),
)

rm_daily = Table(
    "rm_daily",
    metadata,
    Column("day", Date, nullable=False),
    Column("currency", Text, nullable=False),
    *(Column(name, Amount, nullable=False, server_default="0") for name in (
        "approved", "declined", "authorized", "cleared_payments", "cleared", "returned", "spent",
        "refunded", "settled_payments", "settled")),
    PrimaryKeyConstraint("day", "currency"),
)

chain_activity = Table(
    "chain_activity",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_time", DateTime(timezone=True), nullable=False),
    Column("tx_hash", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("cardholder", Text),
    PrimaryKeyConstraint("chain_id", "block_hash", "log_index"),
)

chain_blocks = Table(
    "chain_blocks",
    metadata,
    Column("listener", Text, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("parent_hash", Text, nullable=False),
    PrimaryKeyConstraint("listener", "block_number"),
)

chain_identity = Table(
    "chain_identity",
    metadata,
    Column("listener", Text, primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("genesis_hash", Text, nullable=False),
    Column("first_block", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

network_deliveries = Table(
    "network_deliveries",
    metadata,
    Column("webhook_id", Text, primary_key=True),
    Column("body_sha256", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
# -- the card registry and what the chain says about its Safes (migration 0009) -----------------
# A Safe's balance and allowance start from a reading at one block (`read_*`) and then follow the
# indexed logs after it; each applied log is a row keyed by block hash, so a reorg forgets it.
cards = Table(
    "cards",
    metadata,
    Column("card_id", Text, primary_key=True),
    Column("safe", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("decimals", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("roles_module", Text),
    Column("blocked_mccs", ARRAY(Integer), nullable=False, server_default="{}"),
    Column("velocity_limit", Integer),
    Column("velocity_window_seconds", Integer, nullable=False, server_default="3600"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("cards_safe_token", cards.c.safe, cards.c.token)

card_authorizations = Table(
    "card_authorizations",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("card_id", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("card_authorizations_card_at", card_authorizations.c.card_id, card_authorizations.c.at)

safe_balances = Table(
    "safe_balances",
    metadata,
    Column("safe", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("balance", Amount, nullable=False),
    Column("read_balance", Amount, nullable=False),
    Column("read_block", BigInteger, nullable=False),
    Column("read_block_hash", Text, nullable=False),
    Column("as_of_block", BigInteger, nullable=False),
    Column("as_of_block_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("safe", "token"),
)

safe_balance_moves = Table(
    "safe_balance_moves",
    metadata,
    Column("block_hash", Text, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("safe", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("delta", Amount, nullable=False),
    PrimaryKeyConstraint("block_hash", "log_index", "safe"),
)
Index("safe_balance_moves_latest", safe_balance_moves.c.safe, safe_balance_moves.c.token,
      safe_balance_moves.c.block_number)

_ALLOWANCE_COLUMNS = ("balance", "max_refill", "refill")

safe_allowances = Table(
    "safe_allowances",
    metadata,
    Column("safe", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("roles_module", Text, nullable=False),
    *(Column(name, Amount, nullable=False) for name in _ALLOWANCE_COLUMNS),
    Column("period", BigInteger, nullable=False),
    Column("stamp", BigInteger, nullable=False),
    *(Column(f"read_{name}", Amount, nullable=False) for name in _ALLOWANCE_COLUMNS),
    Column("read_period", BigInteger, nullable=False),
    Column("read_stamp", BigInteger, nullable=False),
    Column("read_block", BigInteger, nullable=False),
    Column("read_block_hash", Text, nullable=False),
    Column("as_of_block", BigInteger, nullable=False),
    Column("as_of_block_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("safe", "token"),
)
Index("safe_allowances_module", safe_allowances.c.roles_module)

safe_allowance_changes = Table(
    "safe_allowance_changes",
    metadata,
    Column("block_hash", Text, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("safe", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    *(Column(name, Amount, nullable=False) for name in _ALLOWANCE_COLUMNS),
    Column("period", BigInteger, nullable=False),
    Column("stamp", BigInteger, nullable=False),
    PrimaryKeyConstraint("block_hash", "log_index", "safe", "token"),
)
Index("safe_allowance_changes_latest", safe_allowance_changes.c.safe,
      safe_allowance_changes.c.token, safe_allowance_changes.c.block_number)


# The ledger (migration 0007; ADR 0009). Balances and amounts are u128 in token base units; the
# CHECKs, triggers and the partial unique index that guard them live in the migration.
LedgerAmount = Numeric(39, 0)
EntryDelta = Numeric(40, 0)
"""A signed change of a balance: -u128 .. u128."""

# The table behind the `ledger_accounts` view (migration 0011, ADR 0011): flagged accounts keep
# their balances here; unflagged ones add theirs in `ledger_account_shards`, and the view sums them.
ledger_account_rows = Table(
    "ledger_account_rows",
    metadata,
    Column("id", Text, primary_key=True),
    Column("ledger", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("debits_pending", LedgerAmount, nullable=False, server_default="0"),
    Column("debits_posted", LedgerAmount, nullable=False, server_default="0"),
    Column("credits_pending", LedgerAmount, nullable=False, server_default="0"),
    Column("credits_posted", LedgerAmount, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

ledger_account_shards = Table(
    "ledger_account_shards",
    metadata,
    Column("account_id", Text, nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("debits_pending", EntryDelta, nullable=False, server_default="0"),
    Column("debits_posted", EntryDelta, nullable=False, server_default="0"),
    Column("credits_pending", EntryDelta, nullable=False, server_default="0"),
    Column("credits_posted", EntryDelta, nullable=False, server_default="0"),
    PrimaryKeyConstraint("account_id", "shard"),
)

ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("debit_account_id", Text, nullable=False),
    Column("credit_account_id", Text, nullable=False),
    Column("amount", LedgerAmount, nullable=False),
    Column("ledger", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("pending_id", Text),
    Column("timeout", BigInteger, nullable=False, server_default="0"),
    Column("user_data", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("pending_status", Text),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("journal_id", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("ledger", Text, nullable=False),
    Column("debits_pending", EntryDelta, nullable=False, server_default="0"),
    Column("debits_posted", EntryDelta, nullable=False, server_default="0"),
    Column("credits_pending", EntryDelta, nullable=False, server_default="0"),
    Column("credits_posted", EntryDelta, nullable=False, server_default="0"),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("journal_id", "account_id"),
)


# -- what later network messages refer to, and the settlement reports (migration 0010) ---------
payment_references = Table(
    "payment_references",
    metadata,
    Column("ref", Text, primary_key=True),
    Column("payment_id", Text, nullable=False),
)

settlement_reports = Table(
    "settlement_reports",
    metadata,
    Column("report_id", Text, primary_key=True),
    Column("settlement_date", Date, nullable=False),
    Column("currency", Text, nullable=False),
    Column("report", JSONB, nullable=False),
)
Index("settlement_reports_by_day", settlement_reports.c.settlement_date,
      settlement_reports.c.currency)


# -- settlement batches, as the settlement saga leaves them (migration 0015) -----------------------
# Figures in fiat minor units; `report` is `domain.settlement.ReportFigures.to_json` (None before
# the report was read); a row only moves to a newer saga version (`revision`).
settlement_batches = Table(
    "settlement_batches",
    metadata,
    Column("day", Date, nullable=False),
    Column("currency", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("count", Integer, nullable=False),
    Column("credit", BigInteger, nullable=False),
    Column("debit", BigInteger, nullable=False),
    Column("report", JSONB),
    Column("window", Integer, nullable=False),
    Column("payment_ids", JSONB, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("day", "currency"),
)

# one row per message the network counts (`domain.settlement.SettlementItem`), once per event
settlement_items = Table(
    "settlement_items",
    metadata,
    Column("day", Date, nullable=False),
    Column("currency", Text, nullable=False),
    Column("item_key", Text, nullable=False),
    Column("payment_id", Text),
    Column("count", Integer, nullable=False),
    Column("credit", BigInteger, nullable=False),
    Column("debit", BigInteger, nullable=False),
    PrimaryKeyConstraint("day", "currency", "item_key"),
)


# -- the network sweep's watch list (migration 0012) ---------------------------------------------
# Payments with a clearing parked before its authorization, fed from the ClearingParked events
# (a partial index on events, declared in the migration); the sweep raises one exception per
# payment parked past CARDPAY_PARKED_CLEARING_TIMEOUT and forgets the row once it is applied.
network_parked_clearings = Table(
    "network_parked_clearings",
    metadata,
    Column("payment_id", Text, primary_key=True),
    Column("parked_since", DateTime(timezone=True), nullable=False),
    Column("checked_version", Integer, nullable=False, server_default="0"),
    Column("exception_at", DateTime(timezone=True)),
)


# -- sagas: instances, durable timers, the effects outbox (migration 0013) ----------------------
# The instance's state is `sagas.engine.codec.to_json`; status and stage are columns for people
# and the stuck-saga query. The effects' partial index on pending rows is the migration's.
saga_instances = Table(
    "saga_instances",
    metadata,
    Column("kind", Text, nullable=False),
    Column("saga_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("state", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("kind", "saga_id"),
)
Index("saga_instances_by_status", saga_instances.c.status, saga_instances.c.updated_at)

saga_timers = Table(
    "saga_timers",
    metadata,
    Column("kind", Text, nullable=False),
    Column("saga_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("kind", "saga_id", "name"),
)
Index("saga_timers_due", saga_timers.c.due_at)

saga_effects = Table(
    "saga_effects",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("saga_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("result", JSONB),
    Column("requested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("answered_at", DateTime(timezone=True)),
)

# -- our own transactions (issue 8: relayer and refund sender; migration 0014) -------------------
onchain_nonces = Table(
    "onchain_nonces",
    metadata,
    Column("sender", Text, primary_key=True),
    Column("next_nonce", BigInteger, nullable=False),
)

onchain_slots = Table(
    "onchain_slots",
    metadata,
    Column("sender", Text, nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("to_address", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("gas", BigInteger, nullable=False),
    Column("meta", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("mined_hash", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("settled_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("sender", "nonce"),
)

onchain_transactions = Table(
    "onchain_transactions",
    metadata,
    Column("tx_hash", Text, primary_key=True),
    Column("sender", Text, nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("gas", BigInteger, nullable=False),
    Column("max_fee", Amount, nullable=False),
    Column("priority_fee", Amount, nullable=False),
    Column("signed_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["sender", "nonce"], ["onchain_slots.sender", "onchain_slots.nonce"],
                         name="onchain_transactions_slot"),
)
Index("onchain_transactions_by_slot", onchain_transactions.c.sender, onchain_transactions.c.nonce)

onchain_requests = Table(
    "onchain_requests",
    metadata,
    Column("request_id", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("sender", Text, nullable=False),
    Column("nonce", BigInteger, nullable=False),
    PrimaryKeyConstraint("request_id", "attempt"),
    ForeignKeyConstraint(["sender", "nonce"], ["onchain_slots.sender", "onchain_slots.nonce"],
                         name="onchain_requests_slot"),
)
Index("onchain_requests_by_slot", onchain_requests.c.sender, onchain_requests.c.nonce)

# bearer tokens of the finance and ops API (migration 0016): the digest, never the token; the
# CHECKs on scopes and digest length live in the migration
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

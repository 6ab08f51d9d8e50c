// Read models of the backfill benchmark: a payment per Spend log, a transfer per token Transfer
// into the settlement account, and running totals per token.
import { onchainTable } from "ponder";

export const payment = onchainTable("payment", (t) => ({
  id: t.text().primaryKey(), // the log's id (block, transaction and log position)
  asset: t.hex().notNull(),
  account: t.hex().notNull(),
  receiver: t.hex().notNull(),
  amount: t.bigint().notNull(),
  txHash: t.hex().notNull(),
  blockNumber: t.bigint().notNull(),
  logIndex: t.integer().notNull(),
}));

export const transfer = onchainTable("transfer", (t) => ({
  id: t.text().primaryKey(),
  token: t.hex().notNull(),
  from: t.hex().notNull(),
  to: t.hex().notNull(),
  amount: t.bigint().notNull(),
  txHash: t.hex().notNull(),
  blockNumber: t.bigint().notNull(),
  logIndex: t.integer().notNull(),
}));

export const tokenTotal = onchainTable("token_total", (t) => ({
  token: t.hex().primaryKey(),
  count: t.integer().notNull(),
  amount: t.bigint().notNull(),
}));

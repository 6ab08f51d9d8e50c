// Ponder config of the backfill benchmark: one local Anvil chain, the Spend logs of the spender
// module and the EURe/USDCe Transfers into the settlement account, from the deploy block.
// Everything comes from the environment (set by benchmarks/ponder_bench.py):
//   PONDER_RPC_URL_31337        JSON-RPC URL of the Anvil node
//   CARDPAY_SPENDER_MODULE      SpenderModule address
//   CARDPAY_TOKENS              token addresses, comma-separated
//   CARDPAY_SETTLEMENT_ACCOUNT  settlement account address (the Transfer `to` filter)
//   CARDPAY_START_BLOCK         deploy block of the contracts
//   CARDPAY_PGLITE_DIR          PGlite data directory (fresh per run), used unless
//   CARDPAY_PONDER_DATABASE_URL PostgreSQL URL is set: then Ponder writes to that database
//   CARDPAY_RPC_COPIES          list the RPC URL this many times (default 1): Ponder keeps one
//                               client-side rate limiter per URL (it starts at 20 requests/s),
//                               so N copies are N limiters on the same node
import { createConfig } from "ponder";
import { getAddress } from "viem";

import { CardTokenAbi, SpenderModuleAbi } from "./abis/cardpay";

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

const startBlock = Number(required("CARDPAY_START_BLOCK"));
const tokens = required("CARDPAY_TOKENS")
  .split(",")
  .map((address) => getAddress(address.trim()));

const databaseUrl = process.env.CARDPAY_PONDER_DATABASE_URL;
const rpcCopies = Math.max(1, Number(process.env.CARDPAY_RPC_COPIES ?? "1"));
const rpcUrl = required("PONDER_RPC_URL_31337");

export default createConfig({
  database:
    databaseUrl !== undefined && databaseUrl !== ""
      ? { kind: "postgres", connectionString: databaseUrl }
      : { kind: "pglite", directory: required("CARDPAY_PGLITE_DIR") },
  chains: {
    anvil: {
      id: 31337,
      rpc: rpcCopies === 1 ? rpcUrl : Array.from({ length: rpcCopies }, () => rpcUrl),
    },
  },
  contracts: {
    SpenderModule: {
      chain: "anvil",
      abi: SpenderModuleAbi,
      address: getAddress(required("CARDPAY_SPENDER_MODULE")),
      startBlock,
    },
    CardToken: {
      chain: "anvil",
      abi: CardTokenAbi,
      address: tokens,
      filter: {
        event: "Transfer",
        args: { to: getAddress(required("CARDPAY_SETTLEMENT_ACCOUNT")) },
      },
      startBlock,
    },
  },
});

"""Turn a receipts file (records of transaction, receipt and block, assembled from the cassettes
named in ORIGIN_PATHS) into replayable fixture directories.

Each recorded transaction becomes anvil-fixtures/gnosis/<name>/ with `logs.jsonl` (standard
`eth_getLogs` result objects, one per line) and `blocks.jsonl` (the block header subset that was
recorded: number, hash, timestamp). Values are copied verbatim; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "anvil-fixtures" / "gnosis"
LOG_FIELDS = ("address", "topics", "data", "blockNumber", "blockHash", "transactionHash",
              "transactionIndex", "logIndex", "removed")


ORIGIN_REPO = "rotki/test-caching"
ORIGIN_COMMIT = "eb86a80c45cca5ded290ab53b8d517f5455e2b56"
ORIGIN_PATHS = {
    "gp_spend_2024-09-17":
        "cassettes/unit/decoders/test_gnosis_pay/test_gnosis_pay_spend[gnosis_accounts0].yaml",
    "gp_spend_new_spender_2026-06-08":
        "cassettes/unit/decoders/test_gnosis_pay/test_gnosis_pay_new_spender_contract[gnosis_accounts0].yaml",
    "gp_refund_batch_2024-09-20":
        "cassettes/unit/decoders/test_gnosis_pay/test_gnosis_pay_refund[gnosis_accounts0].yaml",
    "gp_cashback_batch_2024-09-12":
        "cassettes/unit/decoders/test_gnosis_pay/test_gnosis_pay_cashback[gnosis_accounts0].yaml",
    "gp_referral_2024-10-02":
        "cassettes/unit/decoders/test_gnosis_pay/test_gnosis_pay_referral[gnosis_accounts0].yaml",
    "monerium_eure_v2_mint":
        "cassettes/unit/decoders/test_monerium/test_mint_v2_eure[gnosis_accounts0].yaml",
    "monerium_eure_v2_burn":
        "cassettes/unit/decoders/test_monerium/test_burn_v2_eure_gnosis[gnosis_accounts0].yaml",
}
"""Where each recording comes from: VCR cassettes of rotki's test suite (recorded JSON-RPC
responses of real Gnosis Chain mainnet transactions)."""


def source_note(tx_hash: str, name: str) -> str:
    return (f"tx {tx_hash} on Gnosis Chain mainnet (chain id 100)\n"
            f"recorded JSON-RPC responses from the public repository {ORIGIN_REPO}, commit "
            f"{ORIGIN_COMMIT},\nfile {ORIGIN_PATHS[name]}\n")


def _name(source_file: str) -> str:
    return Path(source_file).stem


def extract(source: Path, out: Path) -> list[Path]:
    records: list[dict[str, Any]] = json.loads(source.read_text())["records"]
    written = []
    for record in records:
        target = out / _name(record["source_file"])
        target.mkdir(parents=True, exist_ok=True)
        block = record["block"]
        with (target / "logs.jsonl").open("w") as fh:
            for log in record["receipt"]["logs"]:
                fh.write(json.dumps({k: log[k] for k in LOG_FIELDS if k in log},
                                    separators=(",", ":")) + "\n")
        with (target / "blocks.jsonl").open("w") as fh:
            fh.write(json.dumps({"number": block["number"], "hash": block["hash"],
                                 "timestamp": block["timestamp"]}, separators=(",", ":")) + "\n")
        (target / "SOURCE.txt").write_text(source_note(record["transaction"]["hash"],
                                                       _name(record["source_file"])))
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True,
                        help="receipts JSON: {\"records\": [{source_file, transaction, receipt, block}]}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in extract(args.source, args.out):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()

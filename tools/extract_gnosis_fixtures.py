"""Turn ../shared/gnosis-data/gnosis_pay_receipts.json into replayable fixture directories.

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
DEFAULT_SOURCE = ROOT.parent / "shared" / "gnosis-data" / "gnosis_pay_receipts.json"
DEFAULT_OUT = ROOT / "anvil-fixtures" / "gnosis"
LOG_FIELDS = ("address", "topics", "data", "blockNumber", "blockHash", "transactionHash",
              "transactionIndex", "logIndex", "removed")


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
        (target / "SOURCE.txt").write_text(
            f"tx {record['transaction']['hash']} from shared/gnosis-data/{record['source_file']}\n"
            "(rotki/test-caching @ eb86a80, real Gnosis Chain mainnet data; see its README.txt)\n"
        )
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in extract(args.source, args.out):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()

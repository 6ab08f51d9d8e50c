"""Decode + classify throughput on one core, against web3.py's `process_log` on the same logs.

    python -m benchmarks.decode_classify [--logs 200000] [--web3-logs 5000]

The logs are realistic Gnosis Pay shapes (a card spend = Spend + Transfer on EURe v2 + the v1
mirror Transfer; refunds; GNO cashback), as raw `eth_getLogs` JSON objects. "decode+classify"
is the listener's hot path from typed logs (web3's `process_log` also starts from a parsed log):
decode by slicing words, drop v1 mirrors, classify. "parse+decode+classify" adds turning the raw
JSON object into a typed, validated log. "web3" is `contract.events.<Event>().process_log(log)`.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from typing import Any

from benchmarks.machine import describe
from cardpay.runtime import tune_gc
from listener.classify import classify, drop_mirrors
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC, Transfer, decode
from listener.logs import Log, parse_log
from listener.presets import EURE_V1, EURE_V2, GNO, GNOSIS

SETTLEMENT = GNOSIS.settlement
SPENDER = sorted(GNOSIS.spender_modules)[0]
CASHBACK = sorted(GNOSIS.cashback_senders)[0]


def _word(value: int | str) -> str:
    return (value[2:] if isinstance(value, str) else format(value, "x")).rjust(64, "0")


def make_logs(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    logs: list[dict[str, Any]] = []
    block, tx = 36_000_000, 0
    while len(logs) < n:
        block += 1
        block_hash = "0x" + rng.getrandbits(256).to_bytes(32, "big").hex()
        for index in range(0, 40, 4):
            tx += 1
            tx_hash = "0x" + tx.to_bytes(32, "big").hex()
            safe = "0x" + rng.getrandbits(160).to_bytes(20, "big").hex()
            amount = rng.randint(1, 500) * 10**16
            kind = rng.random()
            base = {"blockNumber": hex(block), "blockHash": block_hash, "transactionHash": tx_hash,
                    "transactionIndex": hex(index // 4), "removed": False}
            if kind < 0.8:  # card spend: v2 Transfer, v1 mirror, Spend
                t = [TRANSFER_TOPIC, "0x" + _word(safe), "0x" + _word(SETTLEMENT)]
                logs += [
                    {**base, "address": EURE_V2, "topics": t, "data": "0x" + _word(amount),
                     "logIndex": hex(index)},
                    {**base, "address": EURE_V1, "topics": t, "data": "0x" + _word(amount),
                     "logIndex": hex(index + 1)},
                    {**base, "address": SPENDER, "topics": [SPEND_TOPIC],
                     "data": "0x" + _word(EURE_V1) + _word(safe) + _word(SETTLEMENT)
                             + _word(amount), "logIndex": hex(index + 2)},
                ]
            elif kind < 0.95:  # refund from the settlement account
                t = [TRANSFER_TOPIC, "0x" + _word(SETTLEMENT), "0x" + _word(safe)]
                logs += [
                    {**base, "address": EURE_V2, "topics": t, "data": "0x" + _word(amount),
                     "logIndex": hex(index)},
                    {**base, "address": EURE_V1, "topics": t, "data": "0x" + _word(amount),
                     "logIndex": hex(index + 1)},
                ]
            else:  # GNO cashback
                t = [TRANSFER_TOPIC, "0x" + _word(CASHBACK), "0x" + _word(safe)]
                logs.append({**base, "address": GNO, "topics": t, "data": "0x" + _word(amount),
                             "logIndex": hex(index)})
    return logs[:n]


BATCH = 5_000  # logs per range, as the listener reads them


def decode_classify(logs: list[Log]) -> int:
    """Typed logs → decoded events → mirrors dropped → classified, one range at a time."""
    done = 0
    for start in range(0, len(logs), BATCH):
        transfers: list[Transfer] = []
        for item in map(decode, logs[start:start + BATCH]):
            if isinstance(item, Transfer):
                transfers.append(item)
            else:
                done += 1
        done += len(classify(drop_mirrors(transfers, GNOSIS), GNOSIS))
    return done


def parse_decode_classify(raw_logs: list[dict[str, Any]]) -> int:
    """The same from raw JSON-RPC log objects (parsing and validating every field first)."""
    done = 0
    for start in range(0, len(raw_logs), BATCH):
        done += decode_classify([parse_log(raw) for raw in raw_logs[start:start + BATCH]])
    return done


def web3_process(raw_logs: list[dict[str, Any]]) -> int:
    from eth_utils.address import to_checksum_address
    from hexbytes import HexBytes
    from web3 import Web3
    from web3.datastructures import AttributeDict

    from cardpay.devstack.artifacts import load_artifact

    w3 = Web3()
    token = w3.eth.contract(abi=load_artifact("CardToken").abi)
    spender = w3.eth.contract(abi=load_artifact("SpenderModule").abi)
    transfer_event, spend_event = token.events.Transfer(), spender.events.Spend()
    decoded = 0
    for raw in raw_logs:
        log = AttributeDict({
            **raw, "address": to_checksum_address(raw["address"]),
            "topics": [HexBytes(t) for t in raw["topics"]], "data": HexBytes(raw["data"]),
            "blockNumber": int(raw["blockNumber"], 16), "logIndex": int(raw["logIndex"], 16),
            "transactionIndex": int(raw["transactionIndex"], 16),
            "blockHash": HexBytes(raw["blockHash"]),
            "transactionHash": HexBytes(raw["transactionHash"]),
        })
        event = spend_event if raw["topics"][0] == SPEND_TOPIC else transfer_event
        event.process_log(log)
        decoded += 1
    return decoded


def _best_of(fn: Any, data: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=int, default=200_000)
    parser.add_argument("--web3-logs", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tune_gc()  # what `cardpay listen/backfill/replay` do at start-up
    raw = make_logs(args.logs)
    typed = [parse_log(r) for r in raw]
    dc_s = _best_of(decode_classify, typed, args.repeats)
    full_s = _best_of(parse_decode_classify, raw, args.repeats)
    web3_s = _best_of(web3_process, raw[: args.web3_logs], args.repeats)
    dc_rate, full_rate = len(raw) / dc_s, len(raw) / full_s
    web3_rate = args.web3_logs / web3_s
    print(describe())
    print(f"decode+classify:             {len(raw):,} logs in {dc_s:.3f}s = {dc_rate:,.0f} logs/s "
          f"({1e6 / dc_rate:.2f} us/log)")
    print(f"parse+decode+classify (raw): {len(raw):,} logs in {full_s:.3f}s = "
          f"{full_rate:,.0f} logs/s ({1e6 / full_rate:.2f} us/log)")
    print(f"web3 process_log:            {args.web3_logs:,} logs in {web3_s:.3f}s = "
          f"{web3_rate:,.0f} logs/s ({1e6 / web3_rate:.1f} us/log)")
    print(f"ratio decode+classify / web3: {dc_rate / web3_rate:.1f}x; "
          f"with parsing: {full_rate / web3_rate:.1f}x")


if __name__ == "__main__":
    main()

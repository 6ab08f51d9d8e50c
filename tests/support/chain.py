"""An in-memory JSON-RPC node serving recorded blocks and logs (for listener tests without Anvil)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC
from listener.errors import RpcError

SETTLEMENT = "0x" + "48" * 20
SPENDER = "0x" + "5f" * 20
EURE = "0x" + "e0" * 20
SAFE = "0x" + "5a" * 20
ROLES = "0x" + "70" * 20


def word(value: int | str) -> str:
    if isinstance(value, str):
        return value[2:].lower().rjust(64, "0")
    return format(value, "064x")


def block_hash(n: int, fork: str = "") -> str:
    return "0x" + format(n, "060x") + (fork or "0000")[:4].rjust(4, "0")


@dataclass
class RecordedNode:
    logs: list[dict[str, Any]] = field(default_factory=list)
    garbage: list[dict[str, Any]] = field(default_factory=list)
    """Objects a broken node returns among the logs whatever the filter (not logs at all)."""
    head: int = 0
    calls: list[str] = field(default_factory=list)

    def block(self, n: int) -> dict[str, Any]:
        return {
            "number": hex(n), "hash": block_hash(n),
            "parentHash": block_hash(n - 1) if n else "0x" + "00" * 32,
            "timestamp": hex(1_700_000_000 + 5 * n),
        }

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append(method)
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getBlockByNumber":
            n = int(params[0], 16)
            return self.block(n) if n <= self.head else None
        if method == "eth_getLogs":
            f = params[0]
            lo, hi = int(f["fromBlock"], 16), int(f["toBlock"], 16)
            if hi > self.head:  # like Anvil: a range past the head is an error, not empty
                raise RpcError("eth_getLogs", -32602,
                               f"block height is {self.head} but requested was {hi}")
            garbage = [g for g in self.garbage if lo <= int(g.get("blockNumber", "0x0"), 16) <= hi]
            return [log for log in self.logs if self._matches(log, lo, hi, f)] + garbage
        raise AssertionError(f"unexpected RPC {method}")

    @staticmethod
    def _matches(log: dict[str, Any], lo: int, hi: int, f: dict[str, Any]) -> bool:
        """The filter a node applies: block range, emitter list, topic0 alternatives."""
        number = log.get("blockNumber")
        if not isinstance(number, str) or not lo <= int(number, 16) <= hi:
            return False
        addresses = f.get("address")
        if addresses is not None:
            wanted = {a.lower() for a in ([addresses] if isinstance(addresses, str) else addresses)}
            if str(log.get("address", "")).lower() not in wanted:
                return False
        topics = f.get("topics") or []
        if topics and topics[0] is not None:
            first = topics[0] if isinstance(topics[0], list) else [topics[0]]
            log_topics = log.get("topics") or []
            if log_topics and log_topics[0] not in first:
                return False
        return True

    def add_log(self, n: int, tx: int, index: int, address: str, topics: list[str],
                data: str) -> dict[str, Any]:
        log = {
            "address": address, "topics": topics, "data": data,
            "blockNumber": hex(n), "blockHash": block_hash(n),
            "transactionHash": "0x" + format(tx, "064x"), "transactionIndex": "0x0",
            "logIndex": hex(index), "removed": False,
        }
        self.logs.append(log)
        self.head = max(self.head, n)
        return log

    def add_spend(self, n: int, tx: int, amount: int, *, safe: str = SAFE) -> None:
        self.add_log(n, tx, 0, EURE, [TRANSFER_TOPIC, "0x" + word(safe), "0x" + word(SETTLEMENT)],
                     "0x" + word(amount))
        self.add_log(n, tx, 1, SPENDER, [SPEND_TOPIC],
                     "0x" + word(EURE) + word(ROLES) + word(SETTLEMENT) + word(amount))

    def add_refund(self, n: int, tx: int, index: int, amount: int, *, to: str = SAFE) -> None:
        self.add_log(n, tx, index, EURE,
                     [TRANSFER_TOPIC, "0x" + word(SETTLEMENT), "0x" + word(to)], "0x" + word(amount))

"""Typed chain logs: raw JSON-RPC log objects become frozen `Log`s at the edge, or a clear error.

Hex strings are normalized to lowercase; numbers become ints. Block hash, log index and `removed`
stay on the log: they are its identity and its reorg status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from listener.errors import MalformedLog

_HEX = frozenset("0123456789abcdef")


def _hex(value: Any, field: str, *, nbytes: int | None = None) -> str:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise MalformedLog(f"{field}: expected a 0x-prefixed hex string, got {value!r:.80}")
    body = value[2:].lower()
    if not _HEX.issuperset(body) or len(body) % 2:
        raise MalformedLog(f"{field}: not hex bytes: {value!r:.80}")
    if nbytes is not None and len(body) != 2 * nbytes:
        raise MalformedLog(f"{field}: expected {nbytes} bytes, got {len(body) // 2}")
    return "0x" + body


def _quantity(value: Any, field: str) -> int:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")) or len(value) < 3:
        raise MalformedLog(f"{field}: expected a hex quantity, got {value!r:.80}")
    try:
        return int(value, 16)
    except ValueError:
        raise MalformedLog(f"{field}: not a hex quantity: {value!r:.80}") from None


@dataclass(frozen=True, slots=True)
class Log:
    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    removed: bool = False
    block_timestamp: int | None = None

    @property
    def key(self) -> str:
        """Natural idempotency key within a chain: block hash + log index."""
        return f"{self.block_hash}:{self.log_index}"


def parse_log(obj: Mapping[str, Any]) -> Log:
    """Turn one `eth_getLogs` result object into a `Log`, or raise `MalformedLog` saying why."""
    if not isinstance(obj, Mapping):
        raise MalformedLog(f"log is not an object: {obj!r:.80}")
    try:
        topics = obj["topics"]
        if not isinstance(topics, list) or len(topics) > 4:
            raise MalformedLog(f"topics: expected a list of at most 4, got {topics!r:.80}")
        return Log(
            address=_hex(obj["address"], "address", nbytes=20),
            topics=tuple(_hex(t, "topic", nbytes=32) for t in topics),
            data=_hex(obj["data"], "data"),
            block_number=_quantity(obj["blockNumber"], "blockNumber"),
            block_hash=_hex(obj["blockHash"], "blockHash", nbytes=32),
            tx_hash=_hex(obj["transactionHash"], "transactionHash", nbytes=32),
            tx_index=_quantity(obj["transactionIndex"], "transactionIndex"),
            log_index=_quantity(obj["logIndex"], "logIndex"),
            removed=bool(obj.get("removed", False)),
            block_timestamp=(
                None if obj.get("blockTimestamp") is None
                else _quantity(obj["blockTimestamp"], "blockTimestamp")
            ),
        )
    except KeyError as exc:
        raise MalformedLog(f"missing field {exc.args[0]!r}") from None

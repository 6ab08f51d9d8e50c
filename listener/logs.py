"""Typed chain logs: raw JSON-RPC log objects become frozen `Log`s at the edge, or a clear error.

Hex strings are normalized to lowercase; numbers become ints. Block hash, log index and `removed`
stay on the log: they are its identity and its reorg status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

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


class Log(NamedTuple):
    """Immutable; a NamedTuple rather than a frozen dataclass because it is built once per log on
    the hot path (construction is several times cheaper)."""

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


# address, block hash, tx hash, then up to four topics, concatenated: one match checks them all
_FIXED = re.compile(r"0x[0-9a-fA-F]{40}(?:0x[0-9a-fA-F]{64}){2,6}")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_QUANTITIES = re.compile(r"0x[0-9a-fA-F]{1,64}(?:,0x[0-9a-fA-F]{1,64}){3}")


def parse_log(obj: Mapping[str, Any]) -> Log:
    """Turn one `eth_getLogs` result object into a `Log`, or raise `MalformedLog` saying why.

    The hot path checks every field with one compiled pattern; anything it does not accept goes
    through the field-by-field checks, which name what is wrong.
    """
    try:
        address, topics, data = obj["address"], obj["topics"], obj["data"]
        block_hash, tx_hash = obj["blockHash"], obj["transactionHash"]
        number, tx_index, log_index = obj["blockNumber"], obj["transactionIndex"], obj["logIndex"]
        stamp = obj.get("blockTimestamp")
        if (
            type(topics) is list and len(topics) <= 4
            and _FIXED.fullmatch(address + block_hash + tx_hash + "".join(topics))
            and _DATA.fullmatch(data)
            and _QUANTITIES.fullmatch(f"{number},{tx_index},{log_index},{stamp or '0x0'}")
        ):
            return Log(
                address.lower(), tuple([t.lower() for t in topics]), data.lower(),
                int(number, 16), block_hash.lower(), tx_hash.lower(), int(tx_index, 16),
                int(log_index, 16), bool(obj.get("removed", False)),
                None if stamp is None else int(stamp, 16),
            )
    except (KeyError, TypeError):
        pass
    return _parse_log_checked(obj)


def _parse_log_checked(obj: Mapping[str, Any]) -> Log:
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

"""The listener loop: poll `eth_getLogs` behind a confirmation depth, translate, hand to the sink.

Each call of `run_once` covers one block range and ends in one `sink.apply` (one database
transaction): the commands' effects, the quarantined logs and the new cursor commit together, so a
crash anywhere re-reads the same range and the idempotent commands make that harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC
from listener.errors import MalformedLog, ReorgDetected
from listener.logs import Log, parse_log
from listener.ports import ChainSink, Cursor, Rejected, RpcClient
from listener.translate import ChainConfig, translate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RangeResult:
    from_block: int
    to_block: int
    logs: int
    commands: int
    rejected: int


def _block(rpc: RpcClient, number: int) -> dict[str, Any]:
    block = rpc.call("eth_getBlockByNumber", [hex(number), False])
    if not isinstance(block, dict) or "hash" not in block:
        raise ReorgDetected(f"block {number} is not available from the node")
    return block


class Listener:
    def __init__(
        self,
        name: str,
        rpc: RpcClient,
        sink: ChainSink,
        config: ChainConfig,
        *,
        start_block: int,
        confirmations: int,
        max_range: int = 2000,
        on_range: Callable[[RangeResult], None] | None = None,
    ) -> None:
        if confirmations < 0 or max_range < 1:
            raise ValueError("confirmations must be >= 0 and max_range >= 1")
        self.name = name
        self._rpc = rpc
        self._sink = sink
        self._config = config
        self._start_block = start_block
        self._confirmations = confirmations
        self._max_range = max_range
        self._on_range = on_range

    def head(self) -> int:
        return int(self._rpc.call("eth_blockNumber", []), 16)

    def run_once(self) -> RangeResult | None:
        """Index the next range up to the confirmed head; None when there is nothing new."""
        cursor = self._sink.load_cursor(self.name)
        safe = self.head() - self._confirmations
        first = cursor.block_number + 1 if cursor else self._start_block
        if first > safe:
            return None
        last = min(safe, first + self._max_range - 1)
        if cursor is not None:
            parent = _block(self._rpc, first)["parentHash"].lower()
            if parent != cursor.block_hash:
                raise ReorgDetected(
                    f"block {first} builds on {parent}, cursor has {cursor.block_hash} "
                    f"at {cursor.block_number}"
                )
        raw_logs = self._rpc.call(
            "eth_getLogs",
            [{
                "fromBlock": hex(first),
                "toBlock": hex(last),
                "address": self._config.log_addresses,
                "topics": [[SPEND_TOPIC, TRANSFER_TOPIC]],
            }],
        )
        logs, rejected = self._parse(raw_logs)
        translation = translate(logs, self._config, self._timestamps(logs))
        end = _block(self._rpc, last)
        self._sink.apply(
            self.name,
            translation.commands,
            rejected + translation.rejected,
            Cursor(last, end["hash"].lower()),
        )
        result = RangeResult(first, last, len(logs), len(translation.commands),
                             len(rejected) + len(translation.rejected))
        if self._on_range is not None:
            self._on_range(result)
        return result

    def run_until_caught_up(self) -> int:
        """Index ranges until the confirmed head; returns how many ranges it covered."""
        ranges = 0
        while self.run_once() is not None:
            ranges += 1
        return ranges

    def _parse(self, raw_logs: Any) -> tuple[list[Log], list[Rejected]]:
        logs: list[Log] = []
        rejected: list[Rejected] = []
        if not isinstance(raw_logs, list):
            raise MalformedLog(f"eth_getLogs returned {type(raw_logs).__name__}, not a list")
        for raw in raw_logs:
            try:
                logs.append(parse_log(raw))
            except MalformedLog as exc:
                digest = hashlib.sha256(
                    json.dumps(raw, sort_keys=True, default=str).encode()
                ).hexdigest()
                rejected.append(Rejected(f"malformed:{digest}", str(exc),
                                         raw if isinstance(raw, dict) else {"raw": raw}))
        return logs, rejected

    def _timestamps(self, logs: list[Log]) -> dict[int, datetime]:
        stamps: dict[int, datetime] = {}
        for item in logs:
            if item.block_number in stamps:
                continue
            seconds = item.block_timestamp
            if seconds is None:
                seconds = int(_block(self._rpc, item.block_number)["timestamp"], 16)
            stamps[item.block_number] = datetime.fromtimestamp(seconds, UTC)
        return stamps

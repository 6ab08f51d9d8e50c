"""The listener loop: poll `eth_getLogs` behind a confirmation depth, translate, hand to the sink.

Each `run_once` covers one block range and ends in one `sink.apply` (one database transaction):
the commands' effects, the classified activity, the quarantined logs, the block hashes and the new
cursor commit together, so a crash anywhere re-reads the same range and idempotent commands make
that harmless.

Reorgs: before every range the block under the cursor is compared with the node's. On a mismatch
the listener walks back through the block hashes it kept to the newest one the node still has (the
common ancestor), asks the sink to retract everything above it, and goes on from there. A node that
does not have the cursor's block yet is behind, not reorged: the listener waits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from listener.errors import MalformedLog, ReorgTooDeep, RpcError, RpcTransportError
from listener.logs import Log, parse_log
from listener.ports import BlockRef, ChainBatch, ChainSink, Cursor, Rejected, RpcClient, call_many
from listener.presets import ChainConfig
from listener.ranges import RangePlanner, is_range_too_large
from listener.translate import raw_log, translate

log = logging.getLogger(__name__)

__all__ = ["Listener", "RangeResult", "ReorgTooDeep", "build_batch", "parse_logs"]


@dataclass(frozen=True)
class RangeResult:
    from_block: int
    to_block: int
    logs: int
    commands: int
    rejected: int
    activity: int = 0
    reorg_depth: int = 0
    retracted: int = 0
    head: int = 0
    to_block_time: int = 0
    by_class: Mapping[str, int] = field(default_factory=dict)


Observer = Callable[[RangeResult], None]


def _block_ref(raw: Mapping[str, Any]) -> BlockRef:
    return BlockRef(int(raw["number"], 16), str(raw["hash"]).lower(),
                    str(raw["parentHash"]).lower(), int(raw.get("timestamp", "0x0"), 16))


def parse_logs(raw_logs: Any) -> tuple[list[Log], list[Rejected]]:
    """Typed logs, and a `Rejected` (with a stable key) for every object that is not a log."""
    if not isinstance(raw_logs, list):
        raise MalformedLog(f"eth_getLogs returned {type(raw_logs).__name__}, not a list")
    logs: list[Log] = []
    rejected: list[Rejected] = []
    for raw in raw_logs:
        try:
            logs.append(parse_log(raw))
        except MalformedLog as exc:
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode())
            rejected.append(Rejected(f"malformed:{digest.hexdigest()}", str(exc),
                                     raw if isinstance(raw, dict) else {"raw": raw}))
    return logs, rejected


def _split(first: int, last: int, logs: Sequence[Log], rejected: Sequence[Rejected],
           cut: Callable[[int, int, Sequence[int]], int],
           ) -> list[tuple[int, int, list[Log], list[Rejected]]]:
    """A response for `first..last` as consecutive pieces of whole blocks, each within the log
    cap (`cut` gives a piece's last block): the logs are applied piece by piece, never fetched
    twice."""
    def block_of(item: Rejected) -> int:
        number = item.raw.get("blockNumber")
        try:
            return int(number, 16) if isinstance(number, str) else int(number or 0)
        except (TypeError, ValueError):
            return 0  # no usable block number: quarantined with the first piece

    pieces: list[tuple[int, int, list[Log], list[Rejected]]] = []
    numbered = [(block_of(item), item) for item in rejected]
    logs = sorted(logs, key=lambda item: item.block_number)  # stable: a node's order within
    start = 0
    while True:
        rest = logs[start:]
        end = cut(first, last, [item.block_number for item in rest])
        taken = rest if end == last else [item for item in rest if item.block_number <= end]
        start += len(taken)
        low = first if pieces else -1
        high = end if end < last else float("inf")
        pieces.append((first, end, taken, [item for n, item in numbered if low <= n <= high]))
        if end == last:
            return pieces
        first = end + 1


def build_batch(
    config: ChainConfig,
    logs: Sequence[Log],
    rejected: Sequence[Rejected],
    timestamps: Mapping[int, datetime],
    cursor: Cursor,
    blocks: Iterable[BlockRef],
    previous: Cursor | None = None,
) -> ChainBatch:
    """The one translation step shared by live polling and recorded-log replay."""
    live: list[Log] = []
    seen: set[tuple[str, int]] = set()
    duplicates: list[Rejected] = []
    for item in logs:
        if item.removed:
            continue  # a node's notice that the log left the canonical chain
        if (item.block_hash, item.log_index) in seen:
            duplicates.append(Rejected(f"duplicate:{item.key}", "duplicate log in one response",
                                       raw_log(item)))
            continue
        seen.add((item.block_hash, item.log_index))
        live.append(item)
    translation = translate(live, config, timestamps)
    return ChainBatch(
        cursor=cursor,
        previous=previous,
        commands=translation.commands,
        activity=translation.activity,
        rejected=[*rejected, *duplicates, *translation.rejected],
        blocks=tuple(blocks),
        allowances=translation.allowances,
    )


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
        initial_range: int | None = None,
        max_logs: int = 10_000,
        on_range: Observer | None = None,
    ) -> None:
        if confirmations < 0 or max_range < 1:
            raise ValueError("confirmations must be >= 0 and max_range >= 1")
        self.name = name
        self._rpc = rpc
        self._sink = sink
        self._config = config
        self._start_block = start_block
        self._confirmations = confirmations
        self.planner = RangePlanner(size=min(max_range, initial_range or max_range),
                                    maximum=max_range, max_logs=max_logs,
                                    target_logs=min(5_000, max(1, max_logs // 2)))
        self._on_range = on_range

    def cursor(self) -> Cursor | None:
        return self._sink.load_cursor(self.name)

    def head(self) -> int:
        return int(self._rpc.call("eth_blockNumber", []), 16)

    def _header(self, number: int) -> BlockRef | None:
        raw = self._rpc.call("eth_getBlockByNumber", [hex(number), False])
        return None if raw is None else _block_ref(raw)

    def run_once(self, until_block: int | None = None) -> RangeResult | None:
        """Index the next range up to the confirmed head; None when there is nothing to do."""
        cursor = self._sink.load_cursor(self.name)
        if cursor is None:
            head = self.head()
        else:  # the head and the cursor's block in one round trip
            head_raw, here_raw = call_many(self._rpc, [
                ("eth_blockNumber", []),
                ("eth_getBlockByNumber", [hex(cursor.block_number), False])])
            head = int(head_raw, 16)
            here = None if here_raw is None else _block_ref(here_raw)
        safe = head - self._confirmations
        if until_block is not None:
            safe = min(safe, until_block)
        if cursor is not None:
            if here is None:
                log.info("node is behind block %d; waiting", cursor.block_number)
                return None
            if here.hash != cursor.block_hash:
                return self._recover(cursor)
        first = cursor.block_number + 1 if cursor else self._start_block
        if first > safe:
            return None
        last = self.planner.plan(first, safe)
        raw_logs, last = self._get_logs(first, last)
        logs, rejected = parse_logs(raw_logs)
        self.planner.succeeded(last - first + 1, len(logs))
        pieces = _split(first, last, logs, rejected, self.planner.cut)
        if len(pieces) > 1:
            self.planner.over_full(last - first + 1, len(logs))
            log.info("eth_getLogs %d..%d returned %d logs; applying them in %d parts", first,
                     last, len(logs), len(pieces))
        result: RangeResult | None = None
        for piece in pieces:
            applied = self._apply(cursor, safe, *piece)
            if applied is None:
                return result  # the node changed its mind mid-range; the next poll sees it
            result, cursor = applied
            if cursor is None:
                return result  # a reorg was recovered from; the next poll starts over
        return result

    def _apply(self, cursor: Cursor | None, safe: int, first: int, last: int, logs: list[Log],
               rejected: list[Rejected]) -> tuple[RangeResult, Cursor | None] | None:
        """Check one piece's headers against its logs and the cursor, then hand it to the sink.
        Returns the result and the new cursor (None after a reorg recovery), or None when the
        node's answers disagreed and nothing was applied."""
        headers = self._headers_for(logs, last)
        if headers is None:
            return None
        if cursor is not None and first in headers and \
                headers[first].parent_hash != cursor.block_hash:
            return self._recover(cursor), None
        timestamps = self._timestamps(logs, headers)
        end = headers[last]
        batch = build_batch(self._config, logs, rejected, timestamps,
                            Cursor(last, end.hash), headers.values(), previous=cursor)
        self._sink.apply(self.name, batch)
        by_class: dict[str, int] = {}
        for act in batch.activity:
            by_class[act.kind.value] = by_class.get(act.kind.value, 0) + 1
        return self._report(RangeResult(first, last, len(logs), len(batch.commands),
                                        len(batch.rejected), len(batch.activity),
                                        head=safe + self._confirmations,
                                        to_block_time=end.timestamp,
                                        by_class=by_class)), Cursor(last, end.hash)

    def run_until_caught_up(self, until_block: int | None = None) -> int:
        """Index ranges until the confirmed head (or `until_block`); returns how many ranges."""
        ranges = 0
        while True:
            result = self.run_once(until_block)  # None once the cursor reaches until_block
            if result is None:
                return ranges
            ranges += 1

    # -- pieces ---------------------------------------------------------------------------------
    def _get_logs(self, first: int, last: int) -> tuple[Any, int]:
        while True:
            try:
                return self._rpc.call("eth_getLogs", [{
                    "fromBlock": hex(first),
                    "toBlock": hex(last),
                    "address": self._config.log_addresses,
                    "topics": [self._config.log_topics],
                }]), last
            except RpcError as exc:
                if not is_range_too_large(exc) or (self.planner.at_minimum and first == last):
                    raise
                self.planner.refused(first, exc)
            except RpcTransportError:
                if self.planner.at_minimum and first == last:
                    raise
                self.planner.refused(first, None)
            log.info("eth_getLogs %d..%d refused; trying %d blocks", first, last,
                     self.planner.size)
            last = self.planner.plan(first, last)

    def _headers_for(self, logs: Sequence[Log], last: int) -> dict[int, BlockRef] | None:
        """Headers of every block with logs and of `last`, each checked against the logs' hash;
        fetched as JSON-RPC batches when the client can (one round trip per hundred)."""
        wanted = sorted({item.block_number for item in logs} | {last})
        raws = call_many(self._rpc, [("eth_getBlockByNumber", [hex(number), False])
                                     for number in wanted])
        headers: dict[int, BlockRef] = {}
        for number, raw in zip(wanted, raws, strict=True):
            if raw is None:
                return None
            headers[number] = _block_ref(raw)
        for item in logs:
            if item.block_hash != headers[item.block_number].hash:
                log.warning("log %s is from a block no longer canonical; re-reading", item.key)
                return None
        return headers

    @staticmethod
    def _timestamps(logs: Sequence[Log], headers: Mapping[int, BlockRef]) -> dict[int, datetime]:
        return {
            item.block_number: datetime.fromtimestamp(headers[item.block_number].timestamp, UTC)
            for item in logs
        }

    def _recover(self, cursor: Cursor) -> RangeResult:
        """Find the newest kept block the node still has; retract everything above it."""
        kept_blocks = self._sink.recent_blocks(self.name)
        for kept in kept_blocks:
            node = self._header(kept.number)
            if node is not None and node.hash == kept.hash:
                retracted = self._sink.rollback(self.name, kept, cursor)
                depth = cursor.block_number - kept.number
                log.warning("reorg: rolled back %d blocks to %d (%s), retracted %d logs",
                            depth, kept.number, kept.hash, retracted)
                return self._report(RangeResult(kept.number + 1, cursor.block_number, 0, 0, 0,
                                                reorg_depth=depth, retracted=retracted))
        oldest = kept_blocks[-1].number if kept_blocks else None
        raise ReorgTooDeep(
            f"block {cursor.block_number} ({cursor.block_hash}) was reorged out and none of the "
            f"{len(kept_blocks)} kept block hashes is canonical any more (a reorg deeper than the "
            "kept window); re-index from an older block",
            block=cursor.block_number, oldest_kept=oldest,
        )

    def _report(self, result: RangeResult) -> RangeResult:
        if self._on_range is not None:
            self._on_range(result)
        return result

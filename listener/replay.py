"""Recorded-log replay: a directory of `logs.jsonl` + `blocks.jsonl` through the real listener code.

`logs.jsonl` holds standard `eth_getLogs` result objects, one per line; `blocks.jsonl` standard
`eth_getBlockByNumber` results without transactions (at least number, hash and timestamp). Blocks
are replayed in order, one sink transaction each, exactly as the live listener applies a range;
logs the live `eth_getLogs` filter would not return (other emitters or events) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from listener.errors import ChainMismatch, ListenerError
from listener.logs import Log
from listener.poller import build_batch, parse_logs
from listener.ports import BlockRef, ChainSink, Cursor, Rejected
from listener.presets import ChainConfig


class RecordingError(ListenerError):
    """A recording directory that cannot be replayed (missing file, a line that is not JSON)."""


@dataclass
class Recording:
    blocks: dict[int, BlockRef]
    logs: list[Log]
    rejected: list[Rejected] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.is_file():
        raise RecordingError(f"{path} is missing")
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordingError(f"{path}:{number}: not JSON ({exc.msg})") from None


def _quantity(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def load_recording(directory: Path) -> Recording:
    blocks: dict[int, BlockRef] = {}
    for number, raw in _lines(directory / "blocks.jsonl"):
        try:
            ref = BlockRef(_quantity(raw["number"]), str(raw["hash"]).lower(),
                           str(raw.get("parentHash") or "").lower(), _quantity(raw["timestamp"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(f"blocks.jsonl:{number}: not a block header ({exc})") from None
        blocks[ref.number] = ref
    logs, rejected = parse_logs([raw for _, raw in _lines(directory / "logs.jsonl")])
    recording = Recording(blocks, [], rejected)
    for item in logs:
        header = blocks.get(item.block_number)
        if header is None or header.hash != item.block_hash:
            recording.rejected.append(Rejected(
                f"unrecorded-block:{item.key}",
                f"log {item.key} is in block {item.block_number}, whose header is not recorded",
                {"blockNumber": item.block_number, "blockHash": item.block_hash},
            ))
            continue
        recording.logs.append(item)
    return recording


@dataclass(frozen=True)
class ReplayResult:
    blocks: int
    logs: int
    commands: int
    activity: int
    rejected: int


def replay(
    recording: Recording,
    config: ChainConfig,
    sink: ChainSink,
    *,
    name: str = "replay",
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    by_block: dict[int, list[Log]] = {}
    for item in recording.logs:
        if not config.subscribes(item.address, item.topics[0] if item.topics else None):
            continue  # the live filter (emitter + topic0) would not have returned it
        by_block.setdefault(item.block_number, []).append(item)
    if recording.logs and not by_block:
        raise ChainMismatch(
            f"none of the {len(recording.logs)} recorded logs comes from the {config.name} "
            f"preset's contracts (chain {config.chain_id}): a recording of another chain? "
            "(--preset)")
    pending_rejects = list(recording.rejected)
    previous: Cursor | None = sink.load_cursor(name)
    totals = [0, 0, 0, 0]
    numbers = sorted(recording.blocks)
    if not numbers:
        raise RecordingError("the recording has no blocks")
    for done, number in enumerate(numbers, 1):
        header = recording.blocks[number]
        logs = sorted(by_block.get(number, []), key=lambda item: item.log_index)
        stamp = {number: datetime.fromtimestamp(header.timestamp, UTC)}
        cursor = Cursor(number, header.hash)
        batch = build_batch(config, logs, pending_rejects, stamp, cursor, [header],
                            previous=previous)
        pending_rejects = []
        sink.apply(name, batch)
        previous = cursor
        for i, n in enumerate((len(logs), len(batch.commands), len(batch.activity),
                               len(batch.rejected))):
            totals[i] += n
        if progress is not None:
            progress(done, len(numbers))
    return ReplayResult(len(numbers), *totals)

"""Recorded nodes that change their mind mid-poll: a fork of a recorded chain, and a node that
switches from one chain to the other at a scripted call (for reorgs no between-polls test sees)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.chain import RecordedNode, block_hash


@dataclass
class ForkedNode(RecordedNode):
    """A recorded chain whose blocks from `fork_from` on have other hashes (a competing branch);
    blocks below it are the same as a plain `RecordedNode`'s."""

    fork_from: int = 1
    fork: str = "f0"

    def _hash(self, n: int) -> str:
        return block_hash(n, self.fork) if n >= self.fork_from else block_hash(n)

    def block(self, n: int) -> dict[str, Any]:
        raw = super().block(n)
        raw["hash"] = self._hash(n)
        if n:
            raw["parentHash"] = self._hash(n - 1)
        return raw

    def add_log(self, n: int, tx: int, index: int, address: str, topics: list[str],
                data: str) -> dict[str, Any]:
        log = super().add_log(n, tx, index, address, topics, data)
        log["blockHash"] = self._hash(n)
        return log


Trigger = Callable[[str, list[Any]], bool]


@dataclass
class SwitchingNode:
    """Answers from `before` until a call matching `switch_after` has been answered, then from
    `after`: the moment a load-balanced endpoint starts routing to a node on another branch.
    With no trigger set it never switches."""

    before: RecordedNode
    after: RecordedNode
    switch_after: Trigger | None = None
    switched: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(method, "before" or "after") for every call, to show where the switch happened."""

    def call(self, method: str, params: list[Any]) -> Any:
        side = "after" if self.switched else "before"
        self.calls.append((method, side))
        result = (self.after if self.switched else self.before).call(method, params)
        if not self.switched and self.switch_after is not None \
                and self.switch_after(method, params):
            self.switched = True
        return result


def after_header(number: int) -> Trigger:
    """Switch as soon as the node has answered `eth_getBlockByNumber` for block `number`."""

    def trigger(method: str, params: list[Any]) -> bool:
        return method == "eth_getBlockByNumber" and int(params[0], 16) == number

    return trigger

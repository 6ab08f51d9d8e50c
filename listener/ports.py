"""What the listener needs from the rest of the system, as Protocols."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from domain.commands import ConfirmSpend, RecordSettlementTransfer

ChainCommand = ConfirmSpend | RecordSettlementTransfer


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last block the listener finished, by number and hash (the hash detects reorgs)."""

    block_number: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log the listener could not use, with the reason; quarantined, never dropped."""

    key: str
    reason: str
    raw: dict[str, Any]


class RpcClient(Protocol):
    def call(self, method: str, params: list[Any]) -> Any: ...


class ChainSink(Protocol):
    """Applies one block range atomically: the commands' effects, the rejects and the cursor."""

    def load_cursor(self, name: str) -> Cursor | None: ...

    def apply(
        self,
        name: str,
        commands: Sequence[ChainCommand],
        rejected: Sequence[Rejected],
        cursor: Cursor,
    ) -> None: ...

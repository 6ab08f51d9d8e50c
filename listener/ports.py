"""What the listener needs from the rest of the system, as Protocols."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from domain.authorization import Allowance
from domain.commands import ConfirmSpend, RecordSettlementTransfer

if TYPE_CHECKING:
    from listener.classify import Activity

ChainCommand = ConfirmSpend | RecordSettlementTransfer


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last block the listener finished, by number and hash (the hash detects reorgs)."""

    block_number: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class BlockRef:
    number: int
    hash: str
    parent_hash: str
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log the listener could not use, with the reason; quarantined, never dropped."""

    key: str
    reason: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AllowanceChange:
    """A Roles module's daily allowance moved, as its logs say.

    ConsumeAllowance (a card spend): `consumed` and `new_balance` are set, and `token` is the
    canonical token of the Spend it paid for (the event itself names no token). SetAllowance:
    `set_to` is the new allowance; the event names no token either, so `token` is None and the
    store attributes it to the module's one tracked token (on mainnet a Gnosis Pay Safe has one
    scoped token).
    """

    roles_module: str
    block_number: int
    block_hash: str
    log_index: int
    block_time: int
    """Epoch seconds of the block: the module refills by block time."""
    token: str | None = None
    consumed: int | None = None
    new_balance: int | None = None
    set_to: Allowance | None = None

    @property
    def key(self) -> str:
        return f"{self.block_hash}:{self.log_index}"


@dataclass(frozen=True)
class ChainBatch:
    """Everything one block range produced; the sink applies it in one transaction."""

    cursor: Cursor
    previous: Cursor | None = None
    """The cursor this range was read after; the sink refuses the batch if it has moved since."""
    commands: Sequence[ChainCommand] = ()
    activity: Sequence[Activity] = ()
    rejected: Sequence[Rejected] = ()
    blocks: Sequence[BlockRef] = field(default_factory=tuple)
    allowances: Sequence[AllowanceChange] = ()


class RpcClient(Protocol):
    def call(self, method: str, params: list[Any]) -> Any: ...


@runtime_checkable
class BatchRpcClient(Protocol):
    """An RPC client that can send many calls in one round trip (a JSON-RPC batch)."""

    def call(self, method: str, params: list[Any]) -> Any: ...

    def call_many(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """The results of `calls`, in order; RpcError if any of them failed."""
        ...


def call_many(rpc: RpcClient, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """`calls` in one round trip when the client can batch, else one after the other."""
    if isinstance(rpc, BatchRpcClient):
        return rpc.call_many(calls)
    return [rpc.call(method, params) for method, params in calls]


class ChainSink(Protocol):
    """Applies one block range atomically: the commands' effects, activity, rejects and cursor."""

    def load_cursor(self, name: str) -> Cursor | None: ...

    def recent_blocks(self, name: str) -> list[BlockRef]:
        """The unfinalized window of block hashes the sink kept, newest first."""
        ...

    def apply(self, name: str, batch: ChainBatch) -> None: ...

    def rollback(self, name: str, ancestor: BlockRef, previous: Cursor) -> int:
        """Retract everything above `ancestor` (a reorg); returns how many logs were retracted.
        Refused if the cursor is no longer `previous` (another writer moved it)."""
        ...

"""The listener's exception family."""

from __future__ import annotations


class ListenerError(Exception):
    """Base of the listener's errors."""


class MalformedLog(ListenerError):
    """A log object that is not a well-formed `eth_getLogs` result."""


class DecodeError(ListenerError):
    """A well-formed log whose topics/data do not decode as the event its topic0 names."""


class RpcError(ListenerError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: JSON-RPC error {code}: {message}")
        self.method, self.code, self.message = method, code, message


class RpcTransportError(ListenerError):
    """The node could not be reached, timed out, or answered with something that is not JSON-RPC."""


class ReorgDetected(ListenerError):
    """The block under the cursor is no longer on the node's canonical chain."""


class ReorgTooDeep(ReorgDetected):
    """No kept block hash is still canonical: the reorg is deeper than the window."""

    def __init__(self, message: str, *, block: int, oldest_kept: int | None) -> None:
        super().__init__(message)
        self.block = block
        """The cursor's block, reorged out."""
        self.oldest_kept = oldest_kept
        """The oldest kept block (also reorged out); None when none was kept."""


class ChainMismatch(ListenerError):
    """The data does not come from the chain the preset names (a recording, a node)."""

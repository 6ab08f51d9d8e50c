"""`ChainReader` on JSON-RPC: `balanceOf` and the Roles module's `allowances` at one block.

Plain `eth_call`s through the project's RPC client (listener.rpc), at a block named by its hash
(EIP-1898) so a reorg between choosing the block and reading it cannot mix two chains.
"""

from __future__ import annotations

from cardpay.errors import CardpayError
from cardpay.handlers.ports import ChainReading
from domain.authorization import Allowance
from listener.errors import ListenerError
from listener.ports import Cursor, RpcClient

BALANCE_OF = "0x70a08231"
"""balanceOf(address)"""
ALLOWANCES = "0x2b603c71"
"""allowances(address): the Roles module's (refill, maxRefill, period, balance, timestamp)."""


class ChainReadFailed(CardpayError):
    """The node did not answer a read as a token or a Roles module would."""


def _address_word(address: str) -> str:
    body = address.lower().removeprefix("0x")
    if len(body) != 40 or any(ch not in "0123456789abcdef" for ch in body):
        raise ChainReadFailed(f"{address!r} is not an address")
    return body.rjust(64, "0")


class RpcChainReader:
    def __init__(self, rpc: RpcClient, *, confirmations: int) -> None:
        self._rpc = rpc
        self._confirmations = confirmations

    def confirmed_block(self) -> Cursor:
        try:
            head = int(self._rpc.call("eth_blockNumber", []), 16)
            number = max(0, head - self._confirmations)
            header = self._rpc.call("eth_getBlockByNumber", [hex(number), False])
            return Cursor(number, str(header["hash"]).lower())
        except (ListenerError, ValueError, TypeError, KeyError) as exc:
            raise ChainReadFailed(f"cannot read the head block: {exc}") from exc

    def _call(self, to: str, data: str, at: Cursor, what: str) -> str:
        try:
            result = self._rpc.call("eth_call", [{"to": to, "data": data},
                                                 {"blockHash": at.block_hash}])
        except ListenerError as exc:
            raise ChainReadFailed(f"{what} at block {at.block_number} failed: {exc}") from exc
        if not isinstance(result, str) or not result.startswith("0x"):
            raise ChainReadFailed(f"{what}: unexpected answer {result!r:.80}")
        return result[2:]

    def read(self, at: Cursor, *, safe: str, token: str, roles_module: str | None,
             allowance_token: str | None) -> ChainReading:
        words = self._call(token, BALANCE_OF + _address_word(safe), at, f"{token}.balanceOf")
        if len(words) != 64:
            raise ChainReadFailed(f"{token}.balanceOf({safe}) returned {len(words) // 2} bytes, "
                                  "not 32: is it an ERC-20 token?")
        allowance = None
        if roles_module is not None and allowance_token is not None:
            raw = self._call(roles_module, ALLOWANCES + _address_word(allowance_token), at,
                             f"{roles_module}.allowances")
            if len(raw) != 5 * 64:
                raise ChainReadFailed(f"{roles_module}.allowances({allowance_token}) returned "
                                      f"{len(raw) // 2} bytes, not 160: is it a Roles module?")
            refill, max_refill, period, balance, stamp = (
                int(raw[i:i + 64], 16) for i in range(0, 320, 64))
            allowance = Allowance(balance, max_refill, refill, period, stamp)
        return ChainReading(at.block_number, at.block_hash, int(words, 16), allowance)

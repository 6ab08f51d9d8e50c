"""The sender's adapters: `RpcNode` (JSON-RPC through the project's client) and `LocalSigner`
(eth_account, a key held in memory and never shown).

The node's refusals are told apart by their messages, as every client has to: "already known",
"known transaction" or "nonce too low" for a transaction it has (or mined) means the broadcast
already happened; "execution reverted" on an estimate means the call reverts now.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3

from cardpay.handlers.onchain import (
    Call,
    CallReverted,
    Fees,
    NodeUnavailable,
    Receipt,
    SignedTx,
    TransactionRejected,
)
from cardpay.settings import Secret
from listener.errors import ListenerError, RpcError, RpcTransportError
from listener.ports import RpcClient

log = logging.getLogger(__name__)

_ALREADY_SENT = ("already known", "known transaction", "nonce too low", "already imported",
                 "transaction already exists")


def _hex(value: Any) -> int:
    return int(str(value), 16)


class RpcNode:
    """`cardpay.handlers.onchain.Node` on JSON-RPC."""

    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc
        self._chain_id: int | None = None

    def _call(self, method: str, params: list[Any]) -> Any:
        try:
            return self._rpc.call(method, params)
        except RpcTransportError as exc:
            raise NodeUnavailable(f"{method}: {exc}") from exc

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = _hex(self._call("eth_chainId", []))
        return self._chain_id

    def nonce(self, address: str, *, pending: bool) -> int:
        return _hex(self._call("eth_getTransactionCount",
                               [address, "pending" if pending else "latest"]))

    def fees(self) -> Fees:
        block = self._call("eth_getBlockByNumber", ["latest", False])
        base = block.get("baseFeePerGas") if isinstance(block, dict) else None
        if base is None:  # a node without EIP-1559: its gas price for both
            price = _hex(self._call("eth_gasPrice", []))
            return Fees(price, price)
        try:
            tip = _hex(self._call("eth_maxPriorityFeePerGas", []))
        except RpcError:
            tip = 10**9
        # room for the base fee to double before the transaction is priced out
        return Fees(2 * _hex(base) + tip, tip)

    def estimate_gas(self, sender: str, call: Call) -> int:
        try:
            return _hex(self._call("eth_estimateGas",
                                   [{"from": sender, "to": call.to, "data": "0x" + call.data}]))
        except RpcError as exc:
            if "revert" in exc.message.lower() or exc.code == 3:
                raise CallReverted(_reason(exc.message)) from None
            raise TransactionRejected(f"eth_estimateGas: {exc.message}") from None

    def send_raw(self, raw: bytes) -> None:
        try:
            self._call("eth_sendRawTransaction", ["0x" + raw.hex()])
        except RpcError as exc:
            if any(text in exc.message.lower() for text in _ALREADY_SENT):
                return
            raise TransactionRejected(exc.message) from None

    def receipt(self, tx_hash: str) -> Receipt | None:
        found = self._call("eth_getTransactionReceipt", [tx_hash])
        if not found or found.get("blockNumber") is None:
            return None
        return Receipt(tx_hash, _hex(found["status"]) == 1, _hex(found["blockNumber"]))

    def call(self, to: str, data: str) -> str:
        """`eth_call` at the latest block: the returned bytes as hex."""
        return str(self._call("eth_call", [{"to": to, "data": data}, "latest"]))

    def knows(self, tx_hash: str) -> bool:
        return self._call("eth_getTransactionByHash", [tx_hash]) is not None

    def revert_reason(self, tx_hash: str, sender: str, call: Call, gas: int,
                      block_number: int) -> str:
        traced = self._traced_reason(tx_hash)
        if traced:
            return traced
        try:
            self._call("eth_call", [{"from": sender, "to": call.to, "data": "0x" + call.data,
                                     "gas": hex(gas)}, hex(max(block_number - 1, 0))])
        except (RpcError, ListenerError) as exc:
            return _reason(str(getattr(exc, "message", exc)))
        return "reverted on chain (its replay on the parent block succeeds: reason unknown)"

    def _traced_reason(self, tx_hash: str) -> str | None:
        """The reason from the node's call tracer (exact even when an earlier transaction of
        the same block caused the revert); None where `debug_traceTransaction` is not served."""
        try:
            trace = self._call("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
        except RpcError:
            return None
        if not isinstance(trace, dict):
            return None
        reason = trace.get("revertReason") or _decode_error(trace.get("output"))
        return str(reason) if reason else (str(trace["error"]) if trace.get("error") else None)


_ERROR_STRING = "08c379a0"
"""Error(string): how Solidity's require(..., "reason") reverts."""


def _decode_error(output: Any) -> str | None:
    if not isinstance(output, str) or not output.startswith("0x" + _ERROR_STRING):
        return None
    body = output[10:]
    try:
        length = int(body[64:128], 16)
        return bytes.fromhex(body[128:128 + 2 * length]).decode("utf-8", "replace")
    except ValueError:
        return None


def _reason(message: str) -> str:
    text = message.strip()
    for prefix in ("execution reverted: ", "execution reverted:"):
        if text.lower().startswith(prefix):
            return text[len(prefix):].strip() or text
    return text


class LocalSigner:
    """`cardpay.handlers.onchain.Signer` with a private key from the settings. The key lives in
    this object only; repr, str and errors show the address."""

    __slots__ = ("_account", "_address")

    def __init__(self, key: Secret) -> None:
        try:
            account = Account.from_key(key.reveal())
        except Exception:  # the library's message could quote the key
            raise ValueError("the private key is not a valid secp256k1 key") from None
        self._account = account
        self._address = str(account.address).lower()

    @property
    def address(self) -> str:
        return self._address

    def sign(self, *, chain_id: int, nonce: int, call: Call, gas: int, fees: Fees,
             signed_at: datetime) -> SignedTx:
        tx = {"type": 2, "chainId": chain_id, "nonce": nonce, "to": _checksum(call.to),
              "data": "0x" + call.data, "value": 0, "gas": gas,
              "maxFeePerGas": fees.max_fee, "maxPriorityFeePerGas": fees.priority_fee}
        signed = self._account.sign_transaction(tx)
        return SignedTx("0x" + bytes(signed.hash).hex().removeprefix("0x"),
                        bytes(signed.raw_transaction), self._address, nonce, gas, fees,
                        signed_at)

    def __repr__(self) -> str:
        return f"LocalSigner({self._address})"

    __str__ = __repr__


def _checksum(address: str) -> str:
    return str(Web3.to_checksum_address(address))


# -- impersonation (a fork: docs/adr/0019) -----------------------------------------------------
def _rlp(item: bytes | int | list[Any]) -> bytes:
    """Recursive-length prefix encoding of bytes, unsigned integers and lists."""
    if isinstance(item, list):
        body = b"".join(_rlp(x) for x in item)
        return _rlp_head(len(body), 0xC0) + body
    if isinstance(item, int):
        item = item.to_bytes((item.bit_length() + 7) // 8, "big") if item else b""
    if len(item) == 1 and item[0] < 0x80:
        return item
    return _rlp_head(len(item), 0x80) + item


def _rlp_head(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


def impersonated_tx_hash(request: dict[str, str]) -> str:
    """The hash Anvil gives an EIP-1559 transaction it sends for an impersonated account: the
    transaction with a zero signature, in its network encoding (the typed envelope as an RLP
    string), followed by the sender's 20 bytes, through keccak (Anvil 1.7; checked against
    Anvil by tests/integration/test_fork_mode.py). Known before the transaction is sent, so it
    is recorded first, as a signed one is."""
    fields: list[Any] = [
        int(request["chainId"], 16), int(request["nonce"], 16),
        int(request["maxPriorityFeePerGas"], 16), int(request["maxFeePerGas"], 16),
        int(request["gas"], 16), bytes.fromhex(request["to"].removeprefix("0x")),
        int(request.get("value", "0x0"), 16), bytes.fromhex(request["data"].removeprefix("0x")),
        [], 0, 0, 0]
    envelope = b"\x02" + _rlp(fields)
    sender = bytes.fromhex(request["from"].removeprefix("0x"))
    return "0x" + keccak(_rlp(envelope) + sender).hex()


class ImpersonatedSigner:
    """`cardpay.handlers.onchain.Signer` for an account nobody here has the key of, on a node
    that impersonates it (an Anvil fork): the "signed" transaction is the unsigned request that
    `ImpersonatingNode` sends with `eth_sendTransaction`, and its hash is Anvil's, computed
    beforehand (`impersonated_tx_hash`)."""

    __slots__ = ("_address",)

    def __init__(self, address: str) -> None:
        self._address = address.lower()

    @property
    def address(self) -> str:
        return self._address

    def sign(self, *, chain_id: int, nonce: int, call: Call, gas: int, fees: Fees,
             signed_at: datetime) -> SignedTx:
        request = {"from": self._address, "to": call.to.lower(), "data": "0x" + call.data,
                   "value": "0x0", "nonce": hex(nonce), "gas": hex(gas), "type": "0x2",
                   "chainId": hex(chain_id), "maxFeePerGas": hex(fees.max_fee),
                   "maxPriorityFeePerGas": hex(fees.priority_fee)}
        raw = json.dumps(request, sort_keys=True).encode()
        return SignedTx(impersonated_tx_hash(request), raw, self._address, nonce, gas, fees,
                        signed_at)

    def __repr__(self) -> str:
        return f"ImpersonatedSigner({self._address})"


class ImpersonatingNode(RpcNode):
    """`RpcNode` whose broadcast sends `ImpersonatedSigner`'s requests: it asks the node to
    impersonate the sender (idempotent, and again after a restarted fork) and sends the request
    unsigned."""

    def set_storage(self, address: str, slot: int, value: int) -> None:
        """``anvil_setStorageAt``: one word of a contract's storage on the fork, set by hand."""
        self._call("anvil_setStorageAt", [address, "0x" + format(slot, "064x"),
                                          "0x" + format(value, "064x")])

    def send_raw(self, raw: bytes) -> None:
        request = json.loads(raw)
        try:
            self._call("anvil_impersonateAccount", [request["from"]])
            sent = self._call("eth_sendTransaction", [request])
        except RpcError as exc:
            if any(text in exc.message.lower() for text in _ALREADY_SENT):
                return
            raise TransactionRejected(exc.message) from None
        expected = impersonated_tx_hash(request)
        if str(sent).lower() != expected:
            log.error("the node gave %s the hash %s, not %s as recorded: this node computes "
                      "impersonated hashes another way; its receipt will not be found",
                      request["from"], sent, expected)

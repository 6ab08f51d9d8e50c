"""Fast log decoding by slicing 32-byte words out of the hex data (no web3 contract decoder).

Strict like eth-abi: an address word must have 12 zero bytes before the address; the data length and
topic count must match the event exactly. Anything else raises `DecodeError` with the reason.
"""

from __future__ import annotations

from typing import NamedTuple

from listener.errors import DecodeError
from listener.logs import Log

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
SPEND_TOPIC = "0xca8fbb9bda99848f447971eae62ad0ad2bc7caf9afcc0d8e4e8ffcf7e06bc28f"
CONSUME_ALLOWANCE_TOPIC = "0x90355d540c2980efb4c360996dfc5405ee87e812e4f3db843857547cbdb5af65"
"""keccak("ConsumeAllowance(bytes32,uint128,uint128)"): Zodiac Roles v2, nothing indexed."""
SET_ALLOWANCE_TOPIC = "0x63d7ec44a20b176da1d60d75259d264ee67b3d8213706afa71a28f69ed8ebece"
"""keccak("SetAllowance(bytes32,uint128,uint128,uint128,uint64,uint64)"), nothing indexed."""
SPENDING_ALLOWANCE_KEY = "0xfe687fc128d1915040376d20ccb1bf40d838ddd82bf9b0ba3da683cc2a251623"
"""keccak("SPENDING_ALLOWANCE"): the key Gnosis Pay's daily limit is kept under."""
_ZERO_PAD = "0" * 24


class Transfer(NamedTuple):
    log: Log
    token: str
    sender: str
    recipient: str
    value: int


class Spend(NamedTuple):
    log: Log
    module: str
    asset: str
    account: str
    receiver: str
    amount: int


class ConsumeAllowance(NamedTuple):
    """A spend used `consumed` of the Roles module's allowance; `new_balance` is what is left."""

    log: Log
    key: str
    consumed: int
    new_balance: int


class SetAllowance(NamedTuple):
    """The Roles module's allowance was set (Zodiac's layout; `timestamp` in epoch seconds)."""

    log: Log
    key: str
    balance: int
    max_refill: int
    refill: int
    period: int
    timestamp: int


def _address(word: str, what: str) -> str:
    if word[:24] != _ZERO_PAD:
        raise DecodeError(f"{what}: not an address (non-zero high bytes)")
    return "0x" + word[24:]


def decode_transfer(log: Log) -> Transfer:
    if len(log.topics) != 3:
        raise DecodeError(f"Transfer: expected 3 topics, got {len(log.topics)}")
    if len(log.data) != 66:
        raise DecodeError(f"Transfer: expected 32 data bytes, got {(len(log.data) - 2) // 2}")
    return Transfer(
        log=log,
        token=log.address,
        sender=_address(log.topics[1][2:], "Transfer.from"),
        recipient=_address(log.topics[2][2:], "Transfer.to"),
        value=int(log.data[2:], 16),
    )


def decode_spend(log: Log) -> Spend:
    if len(log.topics) != 1:
        raise DecodeError(f"Spend: expected 1 topic (nothing indexed), got {len(log.topics)}")
    if len(log.data) != 2 + 4 * 64:
        raise DecodeError(f"Spend: expected 128 data bytes, got {(len(log.data) - 2) // 2}")
    d = log.data
    return Spend(
        log=log,
        module=log.address,
        asset=_address(d[2:66], "Spend.asset"),
        account=_address(d[66:130], "Spend.account"),
        receiver=_address(d[130:194], "Spend.receiver"),
        amount=int(d[194:258], 16),
    )


def _uint(word: str, bits: int, what: str) -> int:
    value = int(word, 16)
    if value >> bits:
        raise DecodeError(f"{what}: does not fit in uint{bits}")
    return value


def _words(log: Log, name: str, count: int) -> list[str]:
    if len(log.topics) != 1:
        raise DecodeError(f"{name}: expected 1 topic (nothing indexed), got {len(log.topics)}")
    if len(log.data) != 2 + count * 64:
        raise DecodeError(f"{name}: expected {count * 32} data bytes, "
                          f"got {(len(log.data) - 2) // 2}")
    return [log.data[2 + 64 * i:66 + 64 * i] for i in range(count)]


def decode_consume_allowance(log: Log) -> ConsumeAllowance:
    key, consumed, balance = _words(log, "ConsumeAllowance", 3)
    return ConsumeAllowance(log, "0x" + key, _uint(consumed, 128, "ConsumeAllowance.consumed"),
                            _uint(balance, 128, "ConsumeAllowance.newBalance"))


def decode_set_allowance(log: Log) -> SetAllowance:
    key, balance, max_refill, refill, period, stamp = _words(log, "SetAllowance", 6)
    return SetAllowance(log, "0x" + key, _uint(balance, 128, "SetAllowance.balance"),
                        _uint(max_refill, 128, "SetAllowance.maxRefill"),
                        _uint(refill, 128, "SetAllowance.refill"),
                        _uint(period, 64, "SetAllowance.period"),
                        _uint(stamp, 64, "SetAllowance.timestamp"))


Decoded = Transfer | Spend | ConsumeAllowance | SetAllowance


def decode(log: Log) -> Decoded:
    if not log.topics:
        raise DecodeError("anonymous log (no topic0)")
    topic0 = log.topics[0]
    if topic0 == TRANSFER_TOPIC:
        return decode_transfer(log)
    if topic0 == SPEND_TOPIC:
        return decode_spend(log)
    if topic0 == CONSUME_ALLOWANCE_TOPIC:
        return decode_consume_allowance(log)
    if topic0 == SET_ALLOWANCE_TOPIC:
        return decode_set_allowance(log)
    raise DecodeError(f"unknown event topic0 {topic0}")

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


def decode(log: Log) -> Transfer | Spend:
    if not log.topics:
        raise DecodeError("anonymous log (no topic0)")
    topic0 = log.topics[0]
    if topic0 == TRANSFER_TOPIC:
        return decode_transfer(log)
    if topic0 == SPEND_TOPIC:
        return decode_spend(log)
    raise DecodeError(f"unknown event topic0 {topic0}")

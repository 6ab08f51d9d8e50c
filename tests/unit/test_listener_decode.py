"""Typed logs and the fast decoder: well-formed logs decode exactly, bad ones say why."""

from __future__ import annotations

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from hypothesis import given
from hypothesis import strategies as st

from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC, Spend, Transfer, decode
from listener.errors import DecodeError, MalformedLog
from listener.logs import parse_log
from tests.support.chain import EURE, ROLES, SAFE, SETTLEMENT, SPENDER, RecordedNode, word

pytestmark = pytest.mark.unit

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
uint256 = st.integers(min_value=0, max_value=2**256 - 1)


def _raw(address: str, topics: list[str], data: str) -> dict[str, object]:
    node = RecordedNode()
    return node.add_log(7, 1, 3, address, topics, data)


@given(asset=addresses, account=addresses, receiver=addresses, amount=uint256)
def test_spend_decodes_like_eth_abi(asset: str, account: str, receiver: str, amount: int) -> None:
    data = "0x" + abi_encode(["address", "address", "address", "uint256"],
                             [asset, account, receiver, amount]).hex()
    spend = decode(parse_log(_raw(SPENDER, [SPEND_TOPIC], data)))
    assert isinstance(spend, Spend)
    expected = abi_decode(["address", "address", "address", "uint256"], bytes.fromhex(data[2:]))
    assert (spend.asset, spend.account, spend.receiver, spend.amount) == (
        expected[0].lower(), expected[1].lower(), expected[2].lower(), expected[3])


@given(sender=addresses, recipient=addresses, value=uint256)
def test_transfer_decodes_like_eth_abi(sender: str, recipient: str, value: int) -> None:
    log = parse_log(_raw(EURE, [TRANSFER_TOPIC, "0x" + word(sender), "0x" + word(recipient)],
                         "0x" + abi_encode(["uint256"], [value]).hex()))
    transfer = decode(log)
    assert isinstance(transfer, Transfer)
    assert (transfer.token, transfer.sender, transfer.recipient, transfer.value) == (
        EURE, sender, recipient, value)


@pytest.mark.parametrize(
    ("topics", "data", "reason"),
    [
        ([SPEND_TOPIC, "0x" + word(1)], "0x" + word(1) * 4, "expected 1 topic"),
        ([SPEND_TOPIC], "0x" + word(1) * 3, "expected 128 data bytes"),
        ([SPEND_TOPIC], "0x" + "ff" * 32 + word(1) * 3, "non-zero high bytes"),
        ([TRANSFER_TOPIC, "0x" + word(SAFE)], "0x" + word(1), "expected 3 topics"),
        ([TRANSFER_TOPIC, "0x" + word(SAFE), "0x" + word(ROLES)], "0x", "expected 32 data"),
        (["0x" + "12" * 32], "0x", "unknown event topic0"),
        ([], "0x", "anonymous log"),
    ],
)
def test_malformed_event_payloads_are_refused_with_a_reason(
    topics: list[str], data: str, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(parse_log(_raw(SPENDER, topics, data)))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw.pop("blockHash"), "missing field 'blockHash'"),
        (lambda raw: raw.update(data="0xzz"), "not hex"),
        (lambda raw: raw.update(address="0x1234"), "expected 20 bytes"),
        (lambda raw: raw.update(logIndex=7), "expected a hex quantity"),
        (lambda raw: raw.update(topics="nope"), "expected a list"),
    ],
)
def test_malformed_log_objects_are_refused_with_a_reason(mutate: object, reason: str) -> None:
    raw = _raw(SETTLEMENT, [TRANSFER_TOPIC], "0x")
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(MalformedLog, match=reason):
        parse_log(raw)


def test_log_keeps_identity_and_reorg_fields() -> None:
    log = parse_log(_raw(EURE, [TRANSFER_TOPIC], "0x"))
    assert log.block_number == 7 and log.log_index == 3 and log.removed is False
    assert log.key == f"{log.block_hash}:3"

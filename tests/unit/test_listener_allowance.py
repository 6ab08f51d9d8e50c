"""The Roles module's allowance events: decoded strictly, ConsumeAllowance paired with its Spend
for the token, SetAllowance kept with its parameters, other allowance keys ignored."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.authorization import Allowance
from domain.money import Currency
from listener.decode import (
    CONSUME_ALLOWANCE_TOPIC,
    SET_ALLOWANCE_TOPIC,
    SPEND_TOPIC,
    SPENDING_ALLOWANCE_KEY,
    TRANSFER_TOPIC,
    ConsumeAllowance,
    SetAllowance,
    decode,
)
from listener.errors import DecodeError
from listener.logs import Log, parse_log
from listener.presets import ChainConfig, local_config
from listener.translate import translate
from tests.support.chain import EURE, ROLES, SAFE, SETTLEMENT, SPENDER, block_hash, word

pytestmark = pytest.mark.unit

EURE_V1 = "0x" + "e1" * 20
USDC = "0x" + "dc" * 20
ROLES_2 = "0x" + "71" * 20
CONFIG = ChainConfig(
    chain_id=31337, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
    tokens={EURE: Currency("EURe", 18), EURE_V1: Currency("EURe", 18),
            USDC: Currency("USDCe", 6)},
    mirrors={EURE_V1: EURE}, roles_modules=frozenset({ROLES, ROLES_2}))
TIME = datetime(2026, 12, 1, tzinfo=UTC)
OTHER_KEY = "0x" + "ab" * 32


def log(index: int, address: str, topic: str, *words: int | str, tx_no: int = 1,
        topics: list[str] | None = None) -> Log:
    return parse_log({
        "address": address, "topics": topics or [topic],
        "data": "0x" + "".join(word(w) for w in words),
        "blockNumber": "0x7", "blockHash": block_hash(7),
        "transactionHash": "0x" + format(tx_no, "064x"), "transactionIndex": "0x0",
        "logIndex": hex(index), "removed": False})


def consume(index: int, consumed: int, left: int, *, roles: str = ROLES, tx_no: int = 1,
            key: str = SPENDING_ALLOWANCE_KEY) -> Log:
    return log(index, roles, CONSUME_ALLOWANCE_TOPIC, key, consumed, left, tx_no=tx_no)


def spend(index: int, asset: str, amount: int, *, roles: str = ROLES, tx_no: int = 1) -> Log:
    return log(index, SPENDER, SPEND_TOPIC, asset, roles, SETTLEMENT, amount, tx_no=tx_no)


def transfer(index: int, token: str, amount: int, *, tx_no: int = 1) -> Log:
    return log(index, token, TRANSFER_TOPIC, amount, tx_no=tx_no,
               topics=[TRANSFER_TOPIC, "0x" + word(SAFE), "0x" + word(SETTLEMENT)])


def test_decodes_consume_and_set_allowance() -> None:
    c = decode(consume(3, 5, 95))
    assert isinstance(c, ConsumeAllowance)
    assert (c.key, c.consumed, c.new_balance) == (SPENDING_ALLOWANCE_KEY, 5, 95)
    s = decode(log(0, ROLES, SET_ALLOWANCE_TOPIC, SPENDING_ALLOWANCE_KEY, 100, 100, 100, 86_400,
                   1_700_000_000))
    assert isinstance(s, SetAllowance)
    assert (s.balance, s.max_refill, s.refill, s.period, s.timestamp) == (
        100, 100, 100, 86_400, 1_700_000_000)


@pytest.mark.parametrize("bad", [
    log(0, ROLES, CONSUME_ALLOWANCE_TOPIC, SPENDING_ALLOWANCE_KEY, 5),  # a word short
    log(0, ROLES, CONSUME_ALLOWANCE_TOPIC, SPENDING_ALLOWANCE_KEY, 2**128, 1),  # not a uint128
    log(0, ROLES, SET_ALLOWANCE_TOPIC, SPENDING_ALLOWANCE_KEY, 1, 1, 1, 2**64, 0),  # uint64
    log(0, ROLES, CONSUME_ALLOWANCE_TOPIC, 1, 2, 3,
        topics=[CONSUME_ALLOWANCE_TOPIC, "0x" + word(1)]),  # an indexed topic too many
])
def test_malformed_allowance_logs_are_refused_with_a_reason(bad: Log) -> None:
    with pytest.raises(DecodeError):
        decode(bad)


def test_consume_allowance_takes_the_token_of_the_spend_it_paid_for() -> None:
    # two spends in one transaction from two Roles modules, then one for USDCe in another
    logs = [
        transfer(0, EURE, 5), transfer(1, EURE_V1, 5), consume(2, 5, 95), spend(3, EURE_V1, 5),
        consume(4, 5, 40, roles=ROLES_2), spend(5, EURE_V1, 5, roles=ROLES_2),
        consume(6, 7, 1, tx_no=2), spend(7, USDC, 7, tx_no=2),
        consume(8, 9, 0, tx_no=2),  # no Spend follows: token unknown
        consume(9, 1, 1, tx_no=2, key=OTHER_KEY),  # not the card's allowance: ignored
    ]
    out = translate(logs, CONFIG, {7: TIME})
    got = [(c.roles_module, c.token, c.consumed, c.new_balance, c.log_index)
           for c in out.allowances]
    assert got == [(ROLES, EURE, 5, 95, 2), (ROLES_2, EURE, 5, 40, 4), (ROLES, USDC, 7, 1, 6),
                   (ROLES, None, 9, 0, 8)]
    assert all(c.block_time == int(TIME.timestamp()) for c in out.allowances)
    # no allowance log is rejected (only the spends built here without their token Transfer)
    assert [r.key.rsplit(":", 1)[1] for r in out.rejected] == ["5", "7"]


def test_set_allowance_is_kept_with_its_parameters_and_no_token() -> None:
    out = translate([log(0, ROLES, SET_ALLOWANCE_TOPIC, SPENDING_ALLOWANCE_KEY, 10, 20, 30, 60,
                         1_700_000_000)], CONFIG, {7: TIME})
    [change] = out.allowances
    assert change.token is None and change.consumed is None
    assert change.set_to == Allowance(10, 20, 30, 60, 1_700_000_000)


def test_the_filter_reads_allowance_events_only_from_known_roles_modules() -> None:
    assert CONFIG.subscribes(ROLES, CONSUME_ALLOWANCE_TOPIC)
    assert CONFIG.subscribes(ROLES_2, SET_ALLOWANCE_TOPIC)
    assert not CONFIG.subscribes(EURE, CONSUME_ALLOWANCE_TOPIC)
    assert not CONFIG.subscribes(ROLES, TRANSFER_TOPIC)
    assert set(CONFIG.log_topics) == {SPEND_TOPIC, TRANSFER_TOPIC, CONSUME_ALLOWANCE_TOPIC,
                                      SET_ALLOWANCE_TOPIC}
    assert ROLES in CONFIG.log_addresses
    local = local_config({"chain_id": 31337, "settlement_account": SETTLEMENT,
                          "spender_module": SPENDER, "roles_modules": [ROLES.upper()],
                          "tokens": {"EURe": {"address": EURE, "decimals": 18}}})
    assert local.roles_modules == frozenset({ROLES.replace("0X", "0x").lower()})


def test_every_block_pairs_its_own_spends_when_blocks_repeat_the_same_log_indexes() -> None:
    # Two blocks of one transaction each with the same layout (a batcher, or a busy Safe):
    # block 8's ConsumeAllowance is paired with block 8's Spend, not refused because block 7's
    # Spend at the same log index was already taken.
    def in_block(item: Log, number: int, tx_no: int) -> Log:
        return item._replace(block_number=number, block_hash=block_hash(number),
                             tx_hash="0x" + format(tx_no, "064x"))

    logs = [in_block(item, number, tx_no=number)
            for number in (7, 8)
            for item in (consume(2, 5, 95), spend(3, EURE, 5))]
    out = translate(logs, CONFIG, {7: TIME, 8: TIME})
    assert [(c.block_number, c.token, c.log_index) for c in out.allowances] == [
        (7, EURE, 2), (8, EURE, 2)]

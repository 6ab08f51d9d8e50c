"""Registering a card on the fakes: the balance is read at the listener's block, and not stored
if the listener moved past that block meanwhile; the JSON-RPC reader decodes and refuses."""

from __future__ import annotations

from typing import Any

import pytest

from cardpay.handlers.cards import (
    CardNotFound,
    RegistrationRaced,
    register_card,
    set_card_status,
)
from cardpay.handlers.ports import Card, ChainReading
from cardpay.onchain.readings import ChainReadFailed, RpcChainReader
from domain.authorization import Allowance, CardStatus, StatusChangeRefused
from domain.money import Currency
from listener.errors import RpcError
from listener.ports import Cursor
from tests.fakes.storage import FakeDatabase

pytestmark = pytest.mark.unit

SAFE, TOKEN, ROLES = "0x" + "5a" * 20, "0x" + "e0" * 20, "0x" + "70" * 20
CARD = Card("c1", SAFE, TOKEN, Currency("EURe", 18), roles_module=ROLES)


class Reader:
    """Answers from a table of balances per block; `during_read` runs while it reads (e.g. the
    listener advancing)."""

    def __init__(self, db: FakeDatabase, head: Cursor, during_read: Any = None) -> None:
        self.db, self.head, self.during_read, self.reads = db, head, during_read, []

    def confirmed_block(self) -> Cursor:
        return self.head

    def read(self, at: Cursor, *, safe: str, token: str, roles_module: str | None,
             allowance_token: str | None) -> ChainReading:
        self.reads.append(at)
        if self.during_read is not None:
            self.during_read()
        return ChainReading(at.block_number, at.block_hash, 1_000 + at.block_number)


def _move_cursor(db: FakeDatabase, number: int) -> None:
    with db.uow() as uow:
        uow.chain.save_cursor("main", Cursor(number, f"0x{number:064x}"))
        uow.commit()


def test_reads_at_the_listeners_cursor_or_the_confirmed_head() -> None:
    db = FakeDatabase()
    reader = Reader(db, Cursor(50, "0x" + "50" * 32))
    assert register_card(db.uow, reader, CARD, listener="main").block_number == 50
    _move_cursor(db, 70)
    other = Card("c2", "0x" + "5b" * 20, TOKEN, CARD.currency)
    assert register_card(db.uow, reader, other, listener="main").block_number == 70
    balance = db.read().cards.balance(other.safe, TOKEN)
    assert balance is not None and (balance.balance, balance.as_of_block) == (1_070, 70)


def test_a_listener_that_moves_past_the_reading_makes_it_read_again() -> None:
    db = FakeDatabase()
    _move_cursor(db, 10)
    moves = iter([11, 12])
    reader = Reader(db, Cursor(0, "0x" + "00" * 32), lambda: _move_cursor(db, next(moves, 12)))
    reading = register_card(db.uow, reader, CARD, listener="main")
    assert [r.block_number for r in reader.reads] == [10, 11, 12]
    assert reading.block_number == 12 and db.read().cards.get("c1") is not None


def test_a_listener_that_never_waits_is_reported() -> None:
    db = FakeDatabase()
    blocks = iter(range(1, 100))
    reader = Reader(db, Cursor(0, "0x" + "00" * 32), lambda: _move_cursor(db, next(blocks)))
    with pytest.raises(RegistrationRaced):
        register_card(db.uow, reader, CARD, listener="main", attempts=2)
    assert db.read().cards.get("c1") is None


def test_status_changes_and_closed_is_final() -> None:
    db = FakeDatabase()
    register_card(db.uow, Reader(db, Cursor(1, "0x" + "01" * 32)), CARD, listener="main")
    assert set_card_status(db.uow, "c1", CardStatus.FROZEN).status is CardStatus.FROZEN
    assert set_card_status(db.uow, "c1", CardStatus.CLOSED).status is CardStatus.CLOSED
    with pytest.raises(StatusChangeRefused):
        set_card_status(db.uow, "c1", CardStatus.ACTIVE)
    with pytest.raises(CardNotFound):
        set_card_status(db.uow, "nope", CardStatus.FROZEN)
    card = db.read().cards.get("c1")
    assert card is not None and card.status is CardStatus.CLOSED


class Node:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers, self.calls = answers, []

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        answer = self.answers[params[0]["data"][:10] if method == "eth_call" else method]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _word(n: int) -> str:
    return format(n, "064x")


def test_the_rpc_reader_reads_balance_and_allowance_at_the_block_hash() -> None:
    node = Node({"0x70a08231": "0x" + _word(123),
                 "0x2b603c71": "0x" + "".join(_word(n) for n in (10, 20, 86_400, 7, 1_700))})
    at = Cursor(9, "0x" + "09" * 32)
    reading = RpcChainReader(node, confirmations=2).read(
        at, safe=SAFE, token=TOKEN, roles_module=ROLES, allowance_token="0x" + "e1" * 20)
    assert reading == ChainReading(9, at.block_hash, 123, Allowance(7, 20, 10, 86_400, 1_700))
    (_, balance_call), (_, allowance_call) = node.calls
    assert balance_call == [{"to": TOKEN, "data": "0x70a08231" + SAFE[2:].rjust(64, "0")},
                            {"blockHash": at.block_hash}]
    assert allowance_call[0]["data"].endswith("e1" * 20)


@pytest.mark.parametrize("answers", [
    {"0x70a08231": "0x"},  # not a token
    {"0x70a08231": RpcError("eth_call", -32000, "execution reverted")},
    {"0x70a08231": "0x" + _word(1), "0x2b603c71": "0x" + _word(1)},  # not a Roles module
])
def test_the_rpc_reader_refuses_what_is_not_a_token_or_a_roles_module(
        answers: dict[str, Any]) -> None:
    with pytest.raises(ChainReadFailed):
        RpcChainReader(Node(answers), confirmations=0).read(
            Cursor(1, "0x" + "01" * 32), safe=SAFE, token=TOKEN, roles_module=ROLES,
            allowance_token=TOKEN)


def test_the_confirmed_block_is_the_head_minus_the_confirmations() -> None:
    node = Node({"eth_blockNumber": "0x10", "eth_getBlockByNumber": {"hash": "0x" + "AB" * 32}})
    assert RpcChainReader(node, confirmations=2).confirmed_block() == Cursor(14, "0x" + "ab" * 32)
    assert node.calls[1] == ("eth_getBlockByNumber", ["0xe", False])

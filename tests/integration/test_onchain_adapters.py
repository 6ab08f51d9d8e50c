"""The spend relayer and the refund sender on a real Anvil and a real PostgreSQL, driven by the
real card-payment saga: a spend is signed, recorded, broadcast, mined, answered once, and the
listener confirms it on the authorization's own payment; a reverting spend fails HARD with its
reason; a crash between record and broadcast, a duplicate claim, a dropped and a stuck
transaction each end with exactly one spend on chain; refunds of one token share one settlement
Safe transaction (execTransaction → MultiSend);
the keys never show in logs or reprs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from sqlalchemy import Engine, select
from web3 import Web3

from cardpay.bootstrap.cards import allowance_token
from cardpay.bootstrap.demo import chain_config
from cardpay.bootstrap.lifecycle import dev_key
from cardpay.bootstrap.relayer import build_refund_sender, build_spend_relayer, chain_targets
from cardpay.bootstrap.sagas import build_runner
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.artifacts import load_artifact
from cardpay.devstack.local_chain import LocalChain
from cardpay.handlers.cards import register_card
from cardpay.handlers.onchain import (
    EXEC_TRANSACTION_SELECTOR,
    SAFE_TRANSFER_FAILED,
    SEND_REFUND,
    SpendRelayer,
    TransactionSender,
    link_spend,
)
from cardpay.handlers.payments import execute
from cardpay.handlers.ports import Card
from cardpay.handlers.sagas import EffectRequest, SagaRunner
from cardpay.onchain.readings import RpcChainReader
from cardpay.onchain.sender import LocalSigner, RpcNode
from cardpay.postgres import schema as s
from cardpay.postgres.uow import onchain_uow_factory, saga_uow_factory, unit_of_work_factory
from cardpay.settings import Settings
from domain import commands as c
from domain.events import PaymentSpent
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.money import Currency, Money
from listener.presets import ChainConfig
from listener.rpc import HttpJsonRpc
from listener.translate import payment_id_for_spend
from sagas.card_payment import KIND
from sagas.engine.model import Json
from sagas.engine.retry import FailureClass
from tests.support.indexing import make_listener

pytestmark = pytest.mark.integration

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
T0 = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


@dataclass
class Answers:
    """The saga runner's `effect_done`, with every answer noted."""

    runner: SagaRunner
    calls: list[dict[str, Any]] = field(default_factory=list)

    def effect_done(self, request_id: str, *, succeeded: bool, result: Json | None = None,
                    failure: FailureClass = FailureClass.TEMPORARY, detail: str = "") -> bool:
        taken = self.runner.effect_done(request_id, succeeded=succeeded, result=result,
                                        failure=failure, detail=detail)
        self.calls.append({"request_id": request_id, "succeeded": succeeded, "result": result,
                           "failure": failure, "detail": detail, "taken": taken})
        return taken


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Stack:
    chain: LocalChain
    node: AnvilNode
    engine: Engine
    config: ChainConfig
    settings: Settings
    answers: Answers
    clock: Clock
    delivered: dict[str, int] = field(default_factory=dict)

    @property
    def relayer_address(self) -> str:
        return self.chain.deployment.relayer

    def relayer(self, **kwargs: Any) -> SpendRelayer:
        return build_spend_relayer(self.settings, self.engine, self.config, self.answers,
                                   rpc_url=self.chain.rpc_url, clock=self.clock, **kwargs)

    def authorize(self, payment_id: str, amount: int, cardholder: int = 0) -> None:
        """An approved authorization, delivered to the card-payment saga (which asks for the
        spend)."""
        safe = self.chain.deployment.cardholders[cardholder].lower()
        with unit_of_work_factory(self.engine, None)() as uow:
            execute(uow, c.AuthorizePayment(
                command_id=f"{payment_id}:auth", payment_id=payment_id, at=T0, account=safe,
                amount=Money(amount, EURE), merchant="shop", mcc="5411",
                expires_at=T0 + timedelta(days=7)))
            uow.commit()
        self.deliver(payment_id)

    def deliver(self, payment_id: str) -> None:
        """The payment's events the saga has not been given yet (as the feed would)."""
        with unit_of_work_factory(self.engine, None)() as uow:
            events = uow.events.load(payment_id)
        done = self.delivered.get(payment_id, 0)
        self.answers.runner.handle_batch(f"test:{payment_id}", events[done:],
                                         {"0": len(events)})
        self.delivered[payment_id] = len(events)

    def saga(self, payment_id: str) -> Any:
        with saga_uow_factory(self.engine)() as uow:
            return uow.sagas.load(KIND, [payment_id])[payment_id]

    def rows(self, table: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(table)).all())

    def rpc(self, method: str, *params: Any) -> Any:
        return self.node.rpc(method, list(params))

    def nonce(self, address: str) -> int:
        return int(self.rpc("eth_getTransactionCount", address, "latest"), 16)


@pytest.fixture
def stack(local_chain: LocalChain, anvil_node: AnvilNode, pg_engine: Engine) -> Stack:
    d = local_chain.deployment
    config = chain_config(d)
    token = d.token("EURe").address.lower()
    reader = RpcChainReader(HttpJsonRpc(local_chain.rpc_url, retries=0), confirmations=0)
    for i in range(2):
        register_card(unit_of_work_factory(pg_engine, None), reader,
                      Card(f"c{i}", d.cardholders[i].lower(), token, EURE,
                           roles_module=d.roles_modules[i].lower()),
                      listener="test", allowance_token=allowance_token(config, token))
    settings = Settings(relayer_key=dev_key(1), settlement_key=dev_key(0),
                        tx_stuck_after=timedelta(seconds=60))
    clock = Clock()
    return Stack(local_chain, anvil_node, pg_engine, config, settings,
                 Answers(build_runner(settings, pg_engine, clock=clock)), clock)


def _spent_on(stack: Stack, payment_id: str) -> list[PaymentSpent]:
    with unit_of_work_factory(stack.engine, None)() as uow:
        return [e for e in uow.events.load(payment_id) if isinstance(e, PaymentSpent)]


def test_spend_is_sent_mined_answered_once_and_confirmed_on_the_authorization(
        stack: Stack) -> None:
    d = stack.chain.deployment
    before = stack.chain.balance_of("EURe", 0)
    nonce_before = stack.nonce(stack.relayer_address)
    stack.authorize("auth-1", 5 * 10**18)
    relayer = stack.relayer()

    done = relayer.run_once()  # signed and sent, then found mined and answered
    for _ in range(50):  # (a busy node may mine it only after this poll looked)
        if stack.answers.calls:
            break
        time.sleep(0.1)
        done += relayer.run_once()
    assert done == 2
    assert [a["succeeded"] for a in stack.answers.calls] == [True]
    tx_hash = stack.answers.calls[0]["result"]["tx_hash"]
    assert stack.saga("auth-1").data["spend_tx"] == tx_hash
    assert relayer.run_once() == 0  # answered once; nothing signed again
    assert len(stack.answers.calls) == 1
    assert stack.nonce(stack.relayer_address) == nonce_before + 1
    assert stack.chain.balance_of("EURe", 0) == before - 5 * 10**18
    assert [r.tx_hash for r in stack.rows(s.onchain_transactions)] == [tx_hash]
    # the call is mainnet's: spend(asset, account, receiver, amount, roleKey), selector
    # 0x8a320255, nothing appended, from an enabled module of the Spender module
    sent = stack.rpc("eth_getTransactionByHash", tx_hash)
    data = bytes.fromhex(sent["input"].removeprefix("0x"))
    assert sent["to"].lower() == d.spender_module.lower()
    assert data[:4].hex() == "8a320255" and len(data) == 4 + 5 * 32
    assert abi_decode(["address", "address", "address", "uint256", "bytes32"], data[4:]) == (
        d.token("EURe").mirror.lower(), d.roles_modules[0].lower(),  # type: ignore[union-attr]
        d.settlement_account.lower(), 5 * 10**18, Web3.keccak(text="SPENDING_ROLE"))
    spender = stack.chain.w3.eth.contract(address=d.spender_module,
                                          abi=load_artifact("SpenderModule").abi)
    assert spender.functions.isModuleEnabled(Web3.to_checksum_address(sent["from"])).call()

    make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                  d.deployed_at_block).run_until_caught_up()
    spent = _spent_on(stack, "auth-1")
    assert [(e.amount, e.evidence.tx_hash) for e in spent] == [(Money(5 * 10**18, EURE), tx_hash)]
    assert spent[0].account == d.cardholders[0].lower()
    with unit_of_work_factory(stack.engine, None)() as uow:  # no payment of its own
        assert uow.events.load(payment_id_for_spend(d.chain_id, tx_hash, 0)) == []
    stack.deliver("auth-1")
    assert stack.saga("auth-1").stage == "held"  # the saga saw its spend land


def test_a_spend_over_the_allowance_fails_hard_with_the_reason(stack: Stack) -> None:
    stack.chain.set_daily_allowance(0, "EURe", 10**18)
    nonce_before = stack.nonce(stack.relayer_address)
    stack.authorize("auth-big", 2 * 10**18)

    stack.relayer().run_once()

    [answer] = stack.answers.calls
    assert answer["succeeded"] is False and answer["failure"] is FailureClass.HARD
    assert "allowance" in answer["detail"], answer["detail"]
    assert stack.nonce(stack.relayer_address) == nonce_before  # nothing sent
    assert stack.saga("auth-big").status.value in ("compensating", "compensated")


def test_a_spend_that_reverts_on_chain_fails_hard_with_the_reason(stack: Stack) -> None:
    """Two spends each within the allowance, together over it: both estimate fine, the second
    reverts when mined."""
    stack.chain.set_daily_allowance(0, "EURe", 3 * 10**18)
    stack.rpc("evm_setAutomine", False)
    stack.authorize("auth-a", 2 * 10**18)
    stack.authorize("auth-b", 2 * 10**18)
    relayer = stack.relayer()
    relayer.run_once()
    assert stack.answers.calls == []
    stack.rpc("evm_mine")
    relayer.run_once()

    by_id = {a["request_id"]: a for a in stack.answers.calls}
    assert sorted(a["succeeded"] for a in by_id.values()) == [False, True]
    failed = next(a for a in by_id.values() if not a["succeeded"])
    assert failed["failure"] is FailureClass.HARD
    assert "allowance" in failed["detail"], failed["detail"]
    assert "reverted" in failed["detail"]


class _Mute(RpcNode):
    """A node whose broadcasts are lost: the process died after the commit, before sending."""

    def send_raw(self, raw: bytes) -> None:
        return None


def test_crash_between_record_and_broadcast_then_a_duplicate_claim(stack: Stack) -> None:
    nonce_before = stack.nonce(stack.relayer_address)
    before = stack.chain.balance_of("EURe", 0)
    stack.authorize("auth-crash", 10**18)
    assert stack.settings.relayer_key is not None
    crashed = SpendRelayer(
        onchain_uow_factory(stack.engine),
        TransactionSender(_Mute(HttpJsonRpc(stack.chain.rpc_url, retries=0)),
                          LocalSigner(stack.settings.relayer_key), clock=stack.clock,
                          stuck_after=timedelta(minutes=5),
                          on_record=lambda uow, slot, tx: link_spend(
                              uow, slot, tx, chain_id=stack.config.chain_id)),
        stack.answers, chain_targets(stack.config))
    crashed.run_once()
    crashed.run_once()  # claims its own pending request again: recorded, so not signed again
    [recorded] = stack.rows(s.onchain_transactions)
    assert stack.nonce(stack.relayer_address) == nonce_before  # nothing reached the node
    assert stack.answers.calls == []

    restarted = stack.relayer()
    restarted.run_once()  # the recorded tx is unknown to the node: the same bytes go out
    restarted.run_once()
    assert [a["result"] for a in stack.answers.calls] == [{"tx_hash": recorded.tx_hash}]
    assert stack.nonce(stack.relayer_address) == nonce_before + 1
    assert stack.chain.balance_of("EURe", 0) == before - 10**18
    assert len(stack.rows(s.onchain_transactions)) == 1
    assert len(stack.rows(s.onchain_requests)) == 1


def test_a_dropped_transaction_is_broadcast_again(stack: Stack) -> None:
    stack.rpc("evm_setAutomine", False)
    stack.authorize("auth-drop", 10**18)
    relayer = stack.relayer()
    relayer.run_once()
    [tx] = stack.rows(s.onchain_transactions)
    assert stack.rpc("eth_getTransactionByHash", tx.tx_hash) is not None
    stack.rpc("anvil_dropTransaction", tx.tx_hash)
    assert stack.rpc("eth_getTransactionByHash", tx.tx_hash) is None

    relayer.run_once()
    assert stack.rpc("eth_getTransactionByHash", tx.tx_hash) is not None
    stack.rpc("evm_mine")
    relayer.run_once()
    assert [a["result"] for a in stack.answers.calls] == [{"tx_hash": tx.tx_hash}]


def test_a_stuck_transaction_is_replaced_with_higher_fees_and_one_mines(stack: Stack) -> None:
    d = stack.chain.deployment
    nonce_before = stack.nonce(stack.relayer_address)
    before = stack.chain.balance_of("EURe", 0)
    stack.rpc("evm_setAutomine", False)
    stack.authorize("auth-stuck", 10**18)
    relayer = stack.relayer()
    relayer.run_once()
    stack.clock.now += timedelta(seconds=61)
    relayer.run_once()

    first, second = sorted(stack.rows(s.onchain_transactions), key=lambda r: r.signed_at)
    assert (first.nonce, first.sender) == (second.nonce, second.sender)
    assert second.max_fee > first.max_fee and second.priority_fee > first.priority_fee
    stack.rpc("evm_mine")
    relayer.run_once()

    assert [a["result"] for a in stack.answers.calls] == [{"tx_hash": second.tx_hash}]
    assert stack.rpc("eth_getTransactionReceipt", first.tx_hash) is None
    assert stack.saga("auth-stuck").data["spend_tx"] == second.tx_hash
    assert stack.nonce(stack.relayer_address) == nonce_before + 1
    assert stack.chain.balance_of("EURe", 0) == before - 10**18
    # both hashes were linked before they were broadcast; the mined one confirms the payment
    make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                  d.deployed_at_block).run_until_caught_up()
    assert [e.evidence.tx_hash for e in _spent_on(stack, "auth-stuck")] == [second.tx_hash]


def _request_refund(engine: Engine, request_id: str, to: str, amount: int,
                    currency: Currency) -> None:
    with saga_uow_factory(engine)() as uow:
        uow.effects.request(EffectRequest(
            request_id, KIND, f"payment-{request_id}", SEND_REFUND,
            {"payment_id": f"payment-{request_id}", "refund_id": f"refund-{request_id}",
             "to": to, "amount": amount, "currency": currency.code,
             "decimals": currency.decimals}, 1))
        uow.commit()


def test_refunds_of_one_token_go_in_one_refund_batch(stack: Stack) -> None:
    d = stack.chain.deployment
    stack.chain.spend("EURe", 2, 50 * 10**18)  # money in the settlement account
    stack.chain.spend("USDCe", 2, 50 * 10**6)
    eure = [stack.chain.balance_of("EURe", i) for i in range(2)]
    usdce = stack.chain.balance_of("USDCe", 1)
    _request_refund(stack.engine, "r1", d.cardholders[0], 3 * 10**18, EURE)
    _request_refund(stack.engine, "r2", d.cardholders[1], 4 * 10**18, EURE)
    _request_refund(stack.engine, "r3", d.cardholders[1], 5 * 10**6, USDCE)
    sender = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                 rpc_url=stack.chain.rpc_url, clock=stack.clock)

    sender.run_once()
    assert sender.run_once() == 0

    hashes = {a["request_id"]: a["result"]["tx_hash"] for a in stack.answers.calls
              if a["succeeded"]}
    assert set(hashes) == {"r1", "r2", "r3"} and len(stack.answers.calls) == 3
    assert hashes["r1"] == hashes["r2"] != hashes["r3"]
    assert len(stack.rows(s.onchain_transactions)) == 2
    assert [stack.chain.balance_of("EURe", i) for i in range(2)] == \
        [eure[0] + 3 * 10**18, eure[1] + 4 * 10**18]
    assert stack.chain.balance_of("USDCe", 1) == usdce + 5 * 10**6
    receipt = stack.chain.receipt(hashes["r1"])
    assert receipt["to"].lower() == d.settlement_account.lower()
    assert receipt["from"].lower() == d.deployer.lower()  # the Safe's owner, threshold 1
    sent = stack.chain.w3.eth.get_transaction(hashes["r1"])  # type: ignore[arg-type]
    assert bytes(sent["input"])[:4].hex() == EXEC_TRANSACTION_SELECTOR


def test_the_keys_never_show_in_logs_or_reprs(stack: Stack,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stack.authorize("auth-log", 10**18)
    relayer = stack.relayer()
    relayer.run_once()
    key = stack.settings.relayer_key
    assert key is not None and stack.answers.calls[0]["succeeded"]
    secret = key.reveal().removeprefix("0x")
    shown = [caplog.text, repr(stack.settings), str(stack.settings), repr(key), str(key),
             repr(relayer), repr(LocalSigner(key)), repr(vars(relayer))]
    for text in shown:
        assert secret not in text.lower()
    assert "signed submit_spend" in caplog.text  # the log was captured at all




def test_an_unreachable_node_answers_nothing_and_the_next_poll_sends(stack: Stack) -> None:
    from cardpay.devstack.anvil import free_port

    stack.authorize("auth-down", 10**18)
    down = build_spend_relayer(stack.settings, stack.engine, stack.config, stack.answers,
                               rpc_url=f"http://127.0.0.1:{free_port()}", clock=stack.clock)
    assert down.run_once() == 0
    assert stack.answers.calls == [] and stack.rows(s.onchain_transactions) == []
    with saga_uow_factory(stack.engine)() as uow:  # still pending for the next poll
        assert [r.request_id for r in uow.effects.claim(["submit_spend"], 10)] != []

    stack.relayer().run_once()
    assert [a["succeeded"] for a in stack.answers.calls] == [True]


def test_two_relayers_at_once_send_each_spend_once_with_consecutive_nonces(
        stack: Stack) -> None:
    from tests.integration.test_saga_store_contract import run_threads

    nonce_before = stack.nonce(stack.relayer_address)
    before = stack.chain.balance_of("EURe", 1)
    payments = [f"auth-par-{i}" for i in range(12)]
    for pid in payments:
        stack.authorize(pid, 10**17, cardholder=1)
    first, second = stack.relayer(batch=4), stack.relayer(batch=4)

    def work(relayer: SpendRelayer) -> Callable[[], None]:
        def loop() -> None:
            for _ in range(8):
                relayer.run_once()
        return loop

    run_threads(work(first), work(second))
    while first.run_once():
        pass

    answered = [a for a in stack.answers.calls if a["taken"]]
    assert sorted(a["request_id"] for a in answered) == sorted(
        {a["request_id"] for a in answered})  # each answered once
    assert len(answered) == len(payments) and all(a["succeeded"] for a in answered)
    txs = stack.rows(s.onchain_transactions)
    assert sorted(t.nonce for t in txs) == list(range(nonce_before, nonce_before + 12))
    assert stack.nonce(stack.relayer_address) == nonce_before + 12
    assert stack.chain.balance_of("EURe", 1) == before - 12 * 10**17


def test_a_nonce_taken_by_a_transaction_we_did_not_record_is_retried_by_the_saga(
        stack: Stack) -> None:
    """Someone else used the relayer's key: our recorded spend can never be mined. Once it has
    waited as long as a stuck one, the request fails TEMPORARY (nothing happened on chain); the
    saga's retry is a new attempt, which is signed with a fresh nonce and mined."""
    key = stack.settings.relayer_key
    assert key is not None
    before = stack.chain.balance_of("EURe", 0)
    stack.authorize("auth-lost", 10**18)
    mute = SpendRelayer(
        onchain_uow_factory(stack.engine),
        TransactionSender(_Mute(HttpJsonRpc(stack.chain.rpc_url, retries=0)), LocalSigner(key),
                          clock=stack.clock, stuck_after=timedelta(seconds=60)),
        stack.answers, chain_targets(stack.config))
    mute.run_once()
    [ours] = stack.rows(s.onchain_transactions)
    other = Account.from_key(key.reveal()).sign_transaction({
        "type": 2, "chainId": stack.config.chain_id, "nonce": ours.nonce,
        "to": stack.relayer_address, "value": 0, "gas": 21_000,
        "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9})
    stack.rpc("eth_sendRawTransaction", "0x" + bytes(other.raw_transaction).hex())

    relayer = stack.relayer()
    relayer.run_once()
    assert stack.answers.calls == []  # no receipt yet may be a lagging node: wait
    stack.clock.now += timedelta(seconds=61)
    relayer.run_once()
    [lost] = stack.answers.calls
    assert (lost["succeeded"], lost["failure"]) == (False, FailureClass.TEMPORARY)
    assert "did not record" in lost["detail"]

    stack.clock.now += timedelta(minutes=1)
    stack.answers.runner.fire_due_timers()  # the saga's retry: attempt 2
    relayer.run_once()
    assert [a["succeeded"] for a in stack.answers.calls] == [False, True]
    mined = stack.answers.calls[1]["result"]["tx_hash"]
    assert mined != ours.tx_hash and stack.saga("auth-lost").data["spend_tx"] == mined
    assert stack.chain.balance_of("EURe", 0) == before - 10**18


@pytest.mark.parametrize("reorged_first", [False, True, "settled"],
                         ids=["saga_first", "relayer_first", "relayer_settled_first"])
def test_a_spend_a_reorg_took_back_is_sent_again_with_its_nonce_never_twice(
        stack: Stack, reorged_first: bool | str) -> None:
    """The spend is mined, answered and confirmed; a reorg removes its block. The listener
    retracts it, the saga asks for the spend again (its first request id): the relayer follows
    the same nonce again instead of signing a second spend, and the payment ends spent once.
    `relayer_settled_first`: the relayer has the spend mined again and its slot settled before
    the saga's request comes (the request then waits on a settled slot: found by the chaos
    run, where it stayed pending for ever)."""
    d = stack.chain.deployment
    before = stack.chain.balance_of("EURe", 0)
    nonce_before = stack.nonce(stack.relayer_address)
    stack.authorize("auth-reorg", 10**18)
    relayer = stack.relayer()
    relayer.run_once()
    [first] = stack.answers.calls
    listener = make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                             d.deployed_at_block)
    listener.run_until_caught_up()
    stack.deliver("auth-reorg")
    assert stack.saga("auth-reorg").stage == "held"

    stack.rpc("anvil_reorg", 1, [])  # the spend's block is replaced by an empty one
    stack.rpc("evm_mine")
    if reorged_first:
        # the relayer sees its nonce go back before the saga hears of it: the recorded spend
        # is followed again and broadcast again (the same bytes)
        assert stack.rpc("eth_getTransactionReceipt", first["result"]["tx_hash"]) is None
        relayer.run_once()
        assert stack.rpc("eth_getTransactionReceipt", first["result"]["tx_hash"]) is not None
        if reorged_first == "settled":
            for _ in range(50):
                relayer.run_once()
                if {r.status for r in stack.rows(s.onchain_slots)} == {"mined"}:
                    break
                time.sleep(0.1)
            assert {r.status for r in stack.rows(s.onchain_slots)} == {"mined"}
    listener.run_until_caught_up()
    stack.deliver("auth-reorg")  # SpendRetracted: the saga asks for the spend again

    for _ in range(3):
        relayer.run_once()
    retried = [a for a in stack.answers.calls[1:] if a["taken"]]
    assert [a["result"] for a in retried] == [first["result"]]  # the same transaction
    listener.run_until_caught_up()
    stack.deliver("auth-reorg")
    assert stack.saga("auth-reorg").stage == "held"
    assert stack.nonce(stack.relayer_address) == nonce_before + 1
    assert stack.chain.balance_of("EURe", 0) == before - 10**18
    assert len(stack.rows(s.onchain_slots)) == 1
    assert [e.evidence.tx_hash for e in _spent_on(stack, "auth-reorg")] == \
        [first["result"]["tx_hash"]] * 2  # confirmed, retracted, confirmed again


@pytest.mark.parametrize("listener_first", [False, True],
                         ids=["answered_first", "transfer_seen_first"])
def test_a_reversed_payment_is_refunded_and_the_listener_matches_the_refund(
        stack: Stack, listener_first: bool) -> None:
    """The whole chain side of a reversal: spend sent and confirmed, the payment reversed, the
    saga asks for the refund, the refund sender sends it, the saga records the submission with
    the mined hash, and the listener books the transfer as the payment's refund — also when
    it sees the transfer before the answer (kept unmatched, then matched by the submission)."""
    from domain.events import PaymentRefunded

    d = stack.chain.deployment
    before = stack.chain.balance_of("EURe", 0)
    stack.authorize("auth-rev", 2 * 10**18)
    stack.relayer().run_once()
    listener = make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                             d.deployed_at_block)
    listener.run_until_caught_up()
    stack.deliver("auth-rev")
    with unit_of_work_factory(stack.engine, None)() as uow:
        execute(uow, c.ReversePayment(command_id="auth-rev:reverse", payment_id="auth-rev",
                                      at=T0, reason="test"))
        uow.commit()
    stack.deliver("auth-rev")  # RefundRequested: the saga asks for send_refund
    refunds = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                  rpc_url=stack.chain.rpc_url, clock=stack.clock)
    if listener_first:
        stack.rpc("evm_setAutomine", False)
        refunds.run_once()  # sent, not mined
        stack.rpc("evm_mine")
        listener.run_until_caught_up()  # the transfer matches no submitted refund yet
        with unit_of_work_factory(stack.engine, None)() as uow:
            assert not any(isinstance(e, PaymentRefunded) for e in uow.events.load("auth-rev"))
    refunds.run_once()
    refund_answer = stack.answers.calls[-1]
    assert refund_answer["succeeded"], refund_answer
    listener.run_until_caught_up()

    with unit_of_work_factory(stack.engine, None)() as uow:
        refunded = [e for e in uow.events.load("auth-rev") if isinstance(e, PaymentRefunded)]
    assert [(e.amount, e.evidence.tx_hash) for e in refunded] == [
        (Money(2 * 10**18, EURE), refund_answer["result"]["tx_hash"])]
    assert stack.chain.balance_of("EURe", 0) == before
    assert refunds.run_once() == 0


def test_an_answer_the_saga_side_cannot_take_is_retried_and_holds_up_no_other(
        stack: Stack) -> None:
    d = stack.chain.deployment
    stack.chain.spend("EURe", 2, 10 * 10**18)
    stack.chain.spend("USDCe", 2, 10 * 10**6)
    _request_refund(stack.engine, "ra", d.cardholders[0], 10**18, EURE)
    _request_refund(stack.engine, "rb", d.cardholders[1], 10**6, USDCE)
    failing = {"ra"}

    class Flaky(Answers):
        def effect_done(self, request_id: str, **kwargs: Any) -> bool:
            if request_id in failing:
                failing.discard(request_id)
                raise RuntimeError("the saga's reaction failed")
            return super().effect_done(request_id, **kwargs)

    sender = build_refund_sender(stack.settings, stack.engine, stack.config,
                                 Flaky(stack.answers.runner, stack.answers.calls),
                                 rpc_url=stack.chain.rpc_url, clock=stack.clock)
    sender.run_once()
    assert [a["request_id"] for a in stack.answers.calls] == ["rb"]
    sender.run_once()
    assert sorted(a["request_id"] for a in stack.answers.calls) == ["ra", "rb"]
    assert sender.run_once() == 0


def test_kill_9_of_the_relayer_at_random_points_sends_every_spend_exactly_once(
        stack: Stack, pg_url: str, tmp_path: Any) -> None:
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    d = stack.chain.deployment
    key = stack.settings.relayer_key
    assert key is not None
    deployment = tmp_path / "deployment.json"
    deployment.write_text(json.dumps(d.to_dict()))
    nonce_before = stack.nonce(stack.relayer_address)
    before = stack.chain.balance_of("EURe", 1)
    payments = [f"auth-kill-{i}" for i in range(15)]
    for pid in payments:
        stack.authorize(pid, 10**17, cardholder=1)
    env = {**os.environ, "CARDPAY_DATABASE_URL": pg_url, "CARDPAY_RPC_URL": stack.chain.rpc_url,
           "CARDPAY_RELAYER_KEY": key.reveal(), "PYTHONPATH": str(Path.cwd())}
    rng = random.Random(8)
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-m", "tests.support.relayer_loop",
                                  str(deployment)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.1))  # somewhere in its work
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""

    # the killed workers did part of the work (nothing is asserted on how much: timing)
    done_by_killed = sum(1 for pid in payments if stack.saga(pid).data.get("spend_tx"))
    print(f"killed workers: {len(stack.rows(s.onchain_slots))} spends recorded, "
          f"{done_by_killed} answered")
    relayer = stack.relayer()  # the restart, until everything is answered
    for _ in range(20):
        if relayer.run_once() == 0 and all(
                stack.saga(pid).data.get("spend_tx") for pid in payments):
            break
    spent = {pid: stack.saga(pid).data.get("spend_tx") for pid in payments}
    assert all(spent.values()), spent
    assert len(set(spent.values())) == len(payments)
    assert stack.nonce(stack.relayer_address) == nonce_before + len(payments)
    assert stack.chain.balance_of("EURe", 1) == before - len(payments) * 10**17
    assert len(stack.rows(s.onchain_slots)) == len(payments)


def _ledger(stack: Stack, safe: str) -> dict[str, int]:
    """The Safe's side of the EURe ledger: its mirror (what the ledger thinks the Safe holds),
    the card payments' tokens in the settlement account, the funds held and available."""
    chart = ChartOfAccounts("EURe")
    ids = {"mirror": chart.safe_mirror(safe).id,
           "settlement": chart.account_id(AccountKind.ONCHAIN_SETTLEMENT),
           "funds": chart.cardholder(safe).id}
    with unit_of_work_factory(stack.engine, None)() as uow:
        found = {a.id: a for a in uow.ledger.lookup_accounts(list(ids.values()))}
        every = uow.ledger.lookup_accounts(
            [a.id for a in chart.house_accounts()]
            + [ids["funds"], ids["mirror"], chart.exposure(safe).id])
    # the journal balances: debits equal credits, pending and posted apart
    assert sum(a.debits_posted for a in every) == sum(a.credits_posted for a in every)
    assert sum(a.debits_pending for a in every) == sum(a.credits_pending for a in every)
    mirror, settlement, funds = (found[ids[k]] for k in ("mirror", "settlement", "funds"))
    return {"mirror": mirror.debits_posted - mirror.credits_posted,
            "settlement": settlement.debits_posted - settlement.credits_posted,
            "held": funds.debits_pending,
            "available": funds.credits_posted - funds.debits_posted - funds.debits_pending}


def _parties(stack: Stack, payment_id: str) -> tuple[Any, Callable[[], None]]:
    """The listener, and `settle_down`: every party (saga, relayer, refund sender, listener)
    does what it has to for the payment until nothing changes."""
    listener = make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                             stack.chain.deployment.deployed_at_block)
    relayer = stack.relayer()
    refunds = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                  rpc_url=stack.chain.rpc_url, clock=stack.clock)

    def settle_down() -> None:
        for _ in range(4):
            stack.deliver(payment_id)
            relayer.run_once()
            refunds.run_once()
            listener.run_until_caught_up()
        stack.deliver(payment_id)

    return listener, settle_down


def test_reorgs_taking_a_spend_and_a_refund_away_end_right_on_chain_and_in_the_ledger(
        stack: Stack) -> None:
    """A card payment through the network's door (its hold and the Safe's mirror in the
    ledger): the spend lands, a reorg takes it away, the same transaction lands again; the
    payment is reversed, the refund lands, a reorg takes it away, the same refund lands again.
    After every step the ledger's mirror of the Safe and the settlement account's card tokens
    equal the chain, and at the end the Safe holds what it held before, once."""
    from cardpay.handlers.card_network import CardNetworkEffects
    from domain.network import AuthorizationRequest, AuthorizationReversal, Merchant

    d = stack.chain.deployment
    safe = d.cardholders[0].lower()
    key = stack.settings.settlement_key
    assert key is not None
    sender_address = Account.from_key(key.reveal()).address
    sender_nonce = stack.nonce(sender_address)
    before = stack.chain.balance_of("EURe", 0)
    relayer_nonce = stack.nonce(stack.relayer_address)
    effects = CardNetworkEffects(clock=stack.clock)
    eur = Money(1_250, Currency("EUR", 2))
    with unit_of_work_factory(stack.engine, None)() as uow:
        decision = effects.decide(uow, AuthorizationRequest(
            authorization_id="auth-rr", card_id="c0", amount=eur,
            merchant=Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411"),
            network_time=T0), T0)
        uow.commit()
    assert decision.approved
    amount = 125 * 10**17  # 12.50 EUR in EURe base units
    listener, settle_down = _parties(stack, "auth-rr")

    def agrees(spent: int, held: int) -> None:
        chain_now = stack.chain.balance_of("EURe", 0)
        assert chain_now == before - spent
        assert _ledger(stack, safe) == {"mirror": before - spent, "settlement": spent,
                                         "held": held, "available": before - held}

    settle_down()
    assert stack.saga("auth-rr").stage == "held"
    agrees(spent=amount, held=amount)
    spend_tx = stack.saga("auth-rr").data["spend_tx"]

    stack.rpc("anvil_reorg", 1, [])  # the spend's block is replaced by an empty one
    stack.rpc("evm_mine")
    listener.run_until_caught_up()
    # the spend is gone from the chain and from the ledger: tokens back in the Safe's mirror
    assert stack.chain.balance_of("EURe", 0) == before
    assert _ledger(stack, safe)["mirror"] == before
    assert _ledger(stack, safe)["settlement"] == 0
    settle_down()
    assert stack.saga("auth-rr").data["spend_tx"] == spend_tx  # the same transaction again
    agrees(spent=amount, held=amount)

    with unit_of_work_factory(stack.engine, None)() as uow:
        effects.apply(uow, AuthorizationReversal(network_time=T0, reversal_id="rv",
                                                 authorization_id="auth-rr", amount=eur,
                                                 full=True))
        uow.commit()
    settle_down()
    assert stack.saga("auth-rr").data.get("refunded"), stack.saga("auth-rr").data
    agrees(spent=0, held=0)

    stack.rpc("anvil_reorg", 1, [])  # the refund's block is gone, the refund with it
    stack.rpc("evm_mine")
    listener.run_until_caught_up()
    assert stack.chain.balance_of("EURe", 0) == before - amount
    assert _ledger(stack, safe)["mirror"] == before - amount
    assert _ledger(stack, safe)["settlement"] == amount
    settle_down()
    agrees(spent=0, held=0)
    with unit_of_work_factory(stack.engine, None)() as uow:
        types = [type(ev).__name__ for ev in uow.events.load("auth-rr")]
    # each landed, was taken away, landed again
    assert [t for t in types if "Spen" in t or "Refunded" in t or "Retracted" in t] == [
        "PaymentSpent", "SpendRetracted", "PaymentSpent",
        "PaymentRefunded", "RefundRetracted", "PaymentRefunded"], types
    # one refund transaction, sent once; one spend; nothing paid twice
    assert len({a["result"]["tx_hash"] for a in stack.answers.calls if a["succeeded"]}) == 2
    assert stack.nonce(sender_address) == sender_nonce + 1
    assert stack.nonce(stack.relayer_address) == relayer_nonce + 1


def test_a_refund_the_listener_saw_before_its_answer_moves_the_ledger_once(
        stack: Stack) -> None:
    """Found by the reconciliation of a whole lifecycle: when the listener sees a refund's
    transfer before the refund sender's answer, the submission confirms the refund — and must
    move the ledger's mirror and settlement account then, as the listener does otherwise."""
    from cardpay.handlers.card_network import CardNetworkEffects
    from domain.network import AuthorizationRequest, AuthorizationReversal, Merchant

    d = stack.chain.deployment
    safe = d.cardholders[0].lower()
    before = stack.chain.balance_of("EURe", 0)
    effects = CardNetworkEffects(clock=stack.clock)
    eur = Money(700, Currency("EUR", 2))
    with unit_of_work_factory(stack.engine, None)() as uow:
        assert effects.decide(uow, AuthorizationRequest(
            authorization_id="auth-lf", card_id="c0", amount=eur,
            merchant=Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411"),
            network_time=T0), T0).approved
        uow.commit()
    listener = make_listener(stack.engine, stack.chain.rpc_url, stack.config,
                             d.deployed_at_block)
    stack.deliver("auth-lf")
    stack.relayer().run_once()
    listener.run_until_caught_up()
    stack.deliver("auth-lf")
    with unit_of_work_factory(stack.engine, None)() as uow:
        effects.apply(uow, AuthorizationReversal(network_time=T0, reversal_id="rv-lf",
                                                 authorization_id="auth-lf", amount=eur,
                                                 full=True))
        uow.commit()
    stack.deliver("auth-lf")  # the saga reverses the payment on its side
    stack.deliver("auth-lf")  # and asks for the refund
    refunds = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                  rpc_url=stack.chain.rpc_url, clock=stack.clock)
    stack.rpc("evm_setAutomine", False)
    assert refunds.run_once() == 1  # sent, not mined
    stack.rpc("evm_mine")
    listener.run_until_caught_up()  # the transfer matches no submitted refund yet
    assert stack.chain.balance_of("EURe", 0) == before
    assert _ledger(stack, safe)["settlement"] == 7 * 10**18  # nothing moved yet
    refunds.run_once()  # the answer: the submission matches the transfer seen before
    listener.run_until_caught_up()
    assert stack.chain.balance_of("EURe", 0) == before
    assert _ledger(stack, safe) == {"mirror": before, "settlement": 0, "held": 0,
                                    "available": before}


def test_a_reorged_refund_waits_for_the_float_its_reorged_spend_brings_back(
        stack: Stack) -> None:
    """Found by the chaos run with reorgs: the settlement account's tokens come from the spends,
    and a reorg that takes a spend and a refund paid from it away takes the float with them. If
    the refund sender broadcast its refund again before the relayer's spend landed again, the
    refund reverted (the settlement account short) and was a `refund_failed` exception for good.
    The sender now holds a transaction that would revert now (up to `tx_stuck_after`), and
    broadcasts it once its call would pass: the refund lands after the spend, once."""
    d = stack.chain.deployment
    key = stack.settings.settlement_key
    assert key is not None
    refunder = Account.from_key(key.reveal()).address
    refunder_nonce, relayer_nonce = stack.nonce(refunder), stack.nonce(stack.relayer_address)
    before = stack.chain.balance_of("EURe", 0)
    float_before = stack.chain.balance_of("EURe", d.settlement_account)
    stack.authorize("auth-float", 10**18)
    relayer = stack.relayer()
    relayer.run_once()  # the spend: the settlement account's float
    _request_refund(stack.engine, "r-float", d.cardholders[0], 10**18 // 2, EURE)
    refunds = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                  rpc_url=stack.chain.rpc_url, clock=stack.clock)
    refunds.run_once()
    refunds.run_once()
    [refund] = [a for a in stack.answers.calls if a["request_id"] == "r-float"]
    assert refund["succeeded"]

    stack.rpc("anvil_reorg", 2, [])  # the spend's and the refund's blocks are gone
    stack.rpc("evm_mine")
    assert stack.chain.balance_of("EURe", d.settlement_account) == float_before
    refunds.run_once()  # first to notice: its refund would revert now, so it waits
    assert stack.nonce(refunder) == refunder_nonce
    assert [a for a in stack.answers.calls if a["request_id"] == "r-float"] == [refund]
    relayer.run_once()  # the spend lands again
    assert stack.chain.balance_of("EURe", 0) == before - 10**18
    for _ in range(3):
        refunds.run_once()

    answers = [a for a in stack.answers.calls if a["request_id"] == "r-float"]
    assert all(a["succeeded"] for a in answers), answers
    assert {a["result"]["tx_hash"] for a in answers} == {refund["result"]["tx_hash"]}
    assert stack.chain.balance_of("EURe", 0) == before - 10**18 // 2
    assert stack.nonce(refunder) == refunder_nonce + 1
    assert stack.nonce(stack.relayer_address) == relayer_nonce + 1


def test_a_refund_the_settlement_account_cannot_pay_yet_is_refused_softly(
        stack: Stack) -> None:
    """Nothing is signed for a refund batch that would revert now, and the answer is SOFT (the
    saga tries again with backoff, then raises `refund_failed`): the settlement account's float
    comes from spends, and one a reorg took away is sent again within seconds."""
    d = stack.chain.deployment
    key = stack.settings.settlement_key
    assert key is not None
    refunder = Account.from_key(key.reveal()).address
    nonce = stack.nonce(refunder)
    short = stack.chain.balance_of("EURe", d.settlement_account) + 1
    _request_refund(stack.engine, "r-short", d.cardholders[0], short, EURE)
    refunds = build_refund_sender(stack.settings, stack.engine, stack.config, stack.answers,
                                  rpc_url=stack.chain.rpc_url, clock=stack.clock)
    refunds.run_once()

    [answer] = stack.answers.calls
    assert not answer["succeeded"] and answer["failure"] is FailureClass.SOFT
    assert "would revert" in answer["detail"] and SAFE_TRANSFER_FAILED in answer["detail"]
    assert stack.nonce(refunder) == nonce and stack.rows(s.onchain_transactions) == []


def test_a_stand_in_decline_after_our_approval_gives_the_safe_its_money_back(
        stack: Stack) -> None:
    """Approve-then-timeout (the accounting error card processors warn of): we approved in
    time and the spend landed, but our answer reached the network too late and it declined in
    our stead. Its advice releases the hold; the saga then reverses the payment and the refund
    sender pays the spend back: chain and ledger end where they began, nothing held."""
    from cardpay.handlers.card_network import CardNetworkEffects
    from domain.network import AuthorizationAdvice, AuthorizationRequest, Merchant

    d = stack.chain.deployment
    safe = d.cardholders[0].lower()
    before = stack.chain.balance_of("EURe", 0)
    effects = CardNetworkEffects(clock=stack.clock)
    eur = Money(1_250, Currency("EUR", 2))
    shop = Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411")
    with unit_of_work_factory(stack.engine, None)() as uow:
        decision = effects.decide(uow, AuthorizationRequest(
            authorization_id="auth-late", card_id="c0", amount=eur, merchant=shop,
            network_time=T0), T0)
        uow.commit()
    assert decision.approved
    _, settle_down = _parties(stack, "auth-late")

    settle_down()
    assert stack.chain.balance_of("EURe", 0) == before - 125 * 10**17
    with unit_of_work_factory(stack.engine, None)() as uow:
        effects.apply(uow, AuthorizationAdvice(
            network_time=T0, authorization_id="auth-late", card_id="c0", amount=eur,
            approved_amount=Money(0, eur.currency), merchant=shop, reason="issuer_timeout"))
        uow.commit()
    settle_down()

    assert stack.saga("auth-late").data["chain"] == "reversed"
    assert stack.chain.balance_of("EURe", 0) == before
    assert _ledger(stack, safe) == {"mirror": before, "settlement": 0, "held": 0,
                                     "available": before}
    with unit_of_work_factory(stack.engine, None)() as uow:
        types = [type(ev).__name__ for ev in uow.events.load("auth-late")]
    assert types.count("PaymentSpent") == types.count("PaymentRefunded") == 1, types

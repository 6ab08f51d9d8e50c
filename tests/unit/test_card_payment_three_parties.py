"""The card-payment saga against a model of the three parties it coordinates (issue 8).

The card network, the chain and our side (the Payment aggregate and the saga) interact at
random, with time moved by a clock:
- the network sends our approval (or a stand-in advice), increments, partial and full
  reversals, its expiry, clearings (partial, final, beyond what was authorized, after the hold
  ended), merchant returns and duplicates, delivered in any order (a message refused because its
  authorization is not there yet is retried, as the network retries a 503);
- the chain mines, reverts, drops (and re-broadcasts), keeps out for good, or reorgs out the
  transactions the saga's effects sent (a spend mined late after the saga gave up, a refund or
  spend retracted after it was confirmed); the listener confirms what is mined, at depth, later;
- our side: the pure saga (`react`) and the pure aggregate (`handle`), with a feed that lags
  (the saga sees the payment's events in order, sometimes twice), timers that fire when due, and
  a small in-memory executor for the effects (the outbox: taken by an adapter, answered once,
  withdrawn when the saga stops waiting before an adapter took it, done at most once per
  request id — a request asked again re-broadcasts its transaction).

The model keeps its own books, independent of the code under test: every transaction on chain
and whether it is in the canonical chain, what the network cleared and returned. At quiescence
(every message delivered, every effect answered, every transaction mined, every timer fired) it
checks that the Safe's net payment on chain is what the network cleared net of returns; with the
incremental-spend setting exactly and with no exception, with the exception setting up to what
finance exceptions say is owed (a compensation out of tries, allowed only after its tries
really failed, is retried by a person, as `cardpay exceptions retry` does). Always: the
aggregate never refused a command of the saga or of the chain (a refusal is an invisible stuck
payment), no refund is sent under two requests, the saga ends running and waiting for nothing,
and the aggregate's books agree with the chain's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from domain import commands as c
from domain import events as e
from domain.errors import AuthorizationNotFound, DomainError
from domain.money import EURE, Money
from domain.payment import Network, Payment, handle
from sagas.card_payment import (
    REVERSAL_ADVICE,
    SEND_REFUND,
    SUBMIT_SPEND,
    CardPaymentSaga,
    OverClearing,
)
from sagas.engine.model import (
    CancelTimer,
    Effect,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    IssueCommand,
    Message,
    OpenException,
    RequestEffect,
    RetryRequested,
    SagaInstance,
    SetTimer,
    Status,
    TimerFired,
)
from sagas.engine.react import TIMEOUT as TIMEOUT_PREFIX
from sagas.engine.react import react
from sagas.engine.retry import FailureClass, RetryPolicy

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
PID = "auth-1"
SAFE = "0x" + "5a" * 20
CENT = 10**16
POLICY = RetryPolicy(max_attempts=4, base=timedelta(seconds=5), cap=timedelta(minutes=1))
TIMEOUT = timedelta(minutes=10)
SAGAS = {mode: CardPaymentSaga(policy=POLICY, spend_timeout=TIMEOUT, over_clearing=mode)
         for mode in OverClearing}
MAX_REORGS = 3


def eure(cents: int) -> Money:
    return Money(cents * CENT, EURE)


@dataclass
class Tx:
    """A transaction an adapter sent for one effect request (at most one per request)."""

    request_id: str
    kind: str  # "spend" | "refund"
    amount: int  # cents
    tx_hash: str
    refund_id: str = ""
    state: str = "pool"  # pool | dropped | mined | reverted | dead
    block: int = 0
    confirmed: bool = False
    """The listener saw it at depth in its current block."""
    ever_mined: bool = False


@dataclass
class Outbox:
    effect: Effect
    attempt: int
    state: str = "pending"  # pending | taken | done


class ThreeParties(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.stream: list[e.DomainEvent] = []
        self.fed = 0
        self.saga = SagaInstance(PID, "card_payment")
        self.timers: dict[str, datetime] = {}
        self.outbox: dict[str, Outbox] = {}
        self.txs: dict[str, Tx] = {}
        self.blocks = 0
        self.reorgs = 0
        self.exceptions: list[OpenException] = []
        self.refused: list[str] = []
        self.inbox: list[c.Command] = []
        self.sent: list[c.Command] = []
        self.messages = 0
        # the network's own books (what it sent)
        self.net_open = False
        self.net_held = 0
        self.net_cleared = 0
        self.net_final = False
        self.net_returned = 0
        self.net_delivered_cleared = 0
        self.expires_at = T0 + timedelta(days=7)
        self.mode = OverClearing.EXCEPTION
        self.first_amount = 0
        self.slow_chain = False
        self.advice_failures = 0
        """Tries of the reversal advice that failed: out of tries, the saga is stuck with an
        exception until a person retries it (what quiescence then does)."""
        self.topup_timed_out = False
        """An incremental spend went unanswered past its timeout: the saga may give it up and
        raise the shortfall for a person, as with the exception setting."""
        self.short_seen = False
        """The network had cleared more than the Safe's net payment on chain at some moment
        the saga reacted: only then may a finance exception be needed."""

    # -- our side ---------------------------------------------------------------------------------
    @property
    def definition(self) -> CardPaymentSaga:
        return SAGAS[self.mode]

    def payment(self) -> Payment:
        return Payment.rehydrate(PID, self.stream)

    def execute(self, command: c.Command, *, source: str) -> bool:
        """Decide a command on the aggregate; a refusal of ours or the chain's is recorded."""
        payment = self.payment()
        try:
            handle(payment, command)
        except DomainError as exc:
            if source != "network":
                self.refused.append(f"{source}: {type(command).__name__}: {exc}")
            raise
        self.stream += payment.pending_events
        return bool(payment.pending_events)

    def chain_net_confirmed(self) -> int:
        """What the listener has confirmed the Safe paid net of refunds: all the saga can know."""
        return sum(tx.amount if tx.kind == "spend" else -tx.amount
                   for tx in self.txs_in("mined") if tx.confirmed)

    def tell(self, message: Message) -> None:
        self.short_seen |= self.net_delivered_cleared > self.chain_net_confirmed()
        if isinstance(message, TimerFired) and message.name.startswith(TIMEOUT_PREFIX):
            self.topup_timed_out = True
        before = self.saga
        self.saga, actions = react(self.definition, self.saga, message, self.now)
        if before.waiting is not None:
            rid = before.waiting.effect.request_id
            answered = isinstance(message, EffectSucceeded | EffectFailed) \
                and message.request_id == rid
            still = self.saga.waiting is not None and self.saga.waiting.effect.request_id == rid
            row = self.outbox.get(rid)
            if not answered and not still and row is not None and row.state == "pending":
                row.state = "done"  # withdrawn: no adapter does it after its compensation
        for action in actions:
            match action:
                case RequestEffect(effect=effect, attempt=attempt):
                    self.outbox[effect.request_id] = Outbox(effect, attempt)
                case SetTimer(name=name, due=due):
                    self.timers[name] = due
                case CancelTimer(name=name):
                    self.timers.pop(name, None)
                case IssueCommand(command=command):
                    with contextlib.suppress(DomainError):  # recorded in `refused`
                        self.execute(command, source="saga")
                    self.match_refunds()
                case OpenException():
                    self.exceptions.append(action)

    def feed_one(self) -> bool:
        if self.fed >= len(self.stream):
            return False
        event = self.stream[self.fed]
        self.fed += 1
        self.tell(EventArrived(event))
        return True

    def answer(self, request_id: str, message: Message) -> None:
        """An adapter's answer goes through the outbox: taken once, a duplicate is dropped."""
        row = self.outbox.get(request_id)
        if row is None or row.state == "done":
            return
        row.state = "done"
        self.tell(message)

    # -- the network ------------------------------------------------------------------------------
    def send(self, command: c.Command) -> None:
        self.sent.append(command)
        self.inbox.append(command)

    def message_id(self) -> str:
        self.messages += 1
        return f"net-{self.messages}"

    def deliver(self, command: c.Command) -> bool:
        """True once the network is done with the message (accepted or refused for good)."""
        try:
            recorded = self.execute(command, source="network")
        except AuthorizationNotFound:
            return False  # answered 503: the network sends it again later
        except DomainError:
            return True  # answered 4xx: the network gives up on it
        if recorded and isinstance(command, c.RecordClearing):
            self.net_delivered_cleared += command.amount.units // CENT
        return True

    @initialize(mode=st.sampled_from(OverClearing), cents=st.integers(100, 5_000),
                advice=st.booleans(), slow_chain=st.booleans())
    def approve(self, mode: OverClearing, cents: int, advice: bool, slow_chain: bool) -> None:
        """`slow_chain`: at quiescence the clock runs out the saga's timers before the chain
        mines what is left (a spend mined late, after the saga gave up)."""
        self.mode, self.first_amount, self.slow_chain = mode, cents, slow_chain
        self.net_open, self.net_held = True, cents
        base: dict[str, Any] = dict(command_id="net-auth", payment_id=PID, at=self.now,
                                    account=SAFE, amount=eure(cents), merchant="Shop",
                                    mcc="5411", expires_at=self.expires_at)
        self.send(c.AdviseAuthorization(**base, approved=True) if advice
                  else c.AuthorizePayment(**base))
        # our approval is answered at once: it is recorded before anything else
        self.deliver(self.inbox.pop())

    @precondition(lambda self: self.net_open)
    @rule(cents=st.integers(1, 2_000))
    def increment(self, cents: int) -> None:
        self.net_held += cents
        self.send(c.IncreaseAuthorization(command_id=self.message_id(), payment_id=PID,
                                          at=self.now, amount=eure(cents)))

    @precondition(lambda self: self.net_open and self.net_held > 1)
    @rule(share=st.floats(0.05, 0.95))
    def partial_reversal(self, share: float) -> None:
        cents = max(1, int(self.net_held * share))
        self.net_held -= cents
        self.send(c.ReverseAuthorization(command_id=self.message_id(), payment_id=PID,
                                         at=self.now, amount=eure(cents)))

    @precondition(lambda self: self.net_open)
    @rule(expiry=st.booleans())
    def end_hold(self, expiry: bool) -> None:
        self.net_open = False
        mid = self.message_id()
        self.send(c.ExpireAuthorization(command_id=mid, payment_id=PID, at=self.now,
                                        by_network=True) if expiry else
                  c.ReverseAuthorization(command_id=mid, payment_id=PID, at=self.now))

    @precondition(lambda self: not self.net_final)
    @rule(share=st.sampled_from([0.3, 0.5, 0.9, 1.0, 1.0, 1.2, 2.0]), final=st.booleans())
    def clearing(self, share: float, final: bool) -> None:
        """Partial or final; below, at or beyond what was held; also after the hold ended."""
        cents = max(1, int((self.net_held or self.first_amount) * share))
        self.net_cleared += cents
        self.net_final = final
        if final:
            self.net_open = False
        self.send(c.RecordClearing(command_id=self.message_id(), payment_id=PID, at=self.now,
                                   amount=eure(cents), final=final))

    @precondition(lambda self: self.net_delivered_cleared > self.net_returned)
    @rule(share=st.sampled_from([0.1, 0.5, 1.0]))
    def merchant_return(self, share: float) -> None:
        cents = max(1, int((self.net_delivered_cleared - self.net_returned) * share))
        self.net_returned += cents
        self.send(c.RecordReturn(command_id=self.message_id(), payment_id=PID, at=self.now,
                                 amount=eure(cents)))

    @precondition(lambda self: self.inbox)
    @rule(pick=st.integers(0, 10))
    def network_delivers(self, pick: int) -> None:
        """In any order: the network's messages overtake each other."""
        command = self.inbox[pick % len(self.inbox)]
        if self.deliver(command):
            self.inbox.remove(command)

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10))
    def network_repeats(self, pick: int) -> None:
        """A message delivered again: recorded once."""
        command = self.sent[pick % len(self.sent)]
        if command not in self.inbox:
            before = len(self.stream)
            self.deliver(command)
            assert len(self.stream) == before, f"a repeated {type(command).__name__} recorded"

    # -- time -----------------------------------------------------------------------------------
    @rule(minutes=st.sampled_from([1, 5, 11, 60 * 24 * 8]))
    def clock_moves(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @precondition(lambda self: any(due <= self.now for due in self.timers.values()))
    @rule()
    def timer_fires(self) -> None:
        name = min((n for n, due in self.timers.items() if due <= self.now),
                   key=lambda n: (self.timers[n], n))
        del self.timers[name]
        self.tell(TimerFired(name))

    def sweep(self) -> bool:
        """Our own expiry timer on the network side (the api's sweep)."""
        payment = self.payment()
        if payment.network.status is Network.AUTHORIZED and self.now >= self.expires_at:
            self.execute(c.ExpireAuthorization(command_id=f"sweep:{PID}", payment_id=PID,
                                               at=self.now), source="network")
            self.net_open = False
            return True
        return False

    @rule()
    def network_sweep(self) -> None:
        self.sweep()

    # -- the saga's feed ------------------------------------------------------------------------
    @precondition(lambda self: self.fed < len(self.stream))
    @rule(n=st.integers(1, 3))
    def feed_delivers(self, n: int) -> None:
        for _ in range(n):
            self.feed_one()

    @precondition(lambda self: self.fed > 0)
    @rule(back=st.integers(1, 5))
    def feed_repeats(self, back: int) -> None:
        before = self.saga
        self.tell(EventArrived(self.stream[max(0, self.fed - back)]))
        assert self.saga == before, "an event delivered twice changed the saga"

    # -- the adapters and the chain -------------------------------------------------------------
    def pending(self) -> list[Outbox]:
        return [row for row in self.outbox.values() if row.state == "pending"]

    def take(self, row: Outbox) -> None:
        """An adapter takes a request: the network acknowledges an advice; a spend or refund is
        signed once per request id (asked again: the same transaction is broadcast again)."""
        effect = row.effect
        rid = effect.request_id
        if effect.name == REVERSAL_ADVICE:
            self.answer(rid, EffectSucceeded(rid))
            return
        row.state = "taken"
        tx = self.txs.get(rid)
        if tx is None:
            kind = "spend" if effect.name == SUBMIT_SPEND else "refund"
            assert effect.name in (SUBMIT_SPEND, SEND_REFUND), effect.name
            tx = self.txs[rid] = Tx(rid, kind, int(effect.payload["amount"]) // CENT,
                                    f"0x{kind}{len(self.txs) + 1:04d}",
                                    str(effect.payload.get("refund_id", "")))
        elif tx.state == "mined":
            self.answer(rid, EffectSucceeded(rid, {"tx_hash": tx.tx_hash}))
        elif tx.state == "dropped":
            tx.state = "pool"

    @precondition(lambda self: self.pending())
    @rule(pick=st.integers(0, 5), fails=st.booleans())
    def adapter_takes(self, pick: int, fails: bool) -> None:
        rows = self.pending()
        row = rows[pick % len(rows)]
        if fails:  # the node was down before anything was signed: a temporary failure
            rid = row.effect.request_id
            self.advice_failures += row.effect.name == REVERSAL_ADVICE
            self.answer(rid, EffectFailed(rid, FailureClass.TEMPORARY, "node unreachable"))
        else:
            self.take(row)

    def txs_in(self, *states: str) -> list[Tx]:
        return [tx for tx in self.txs.values() if tx.state in states]

    def mine(self, tx: Tx, *, revert: bool = False) -> None:
        row = self.outbox.get(tx.request_id)
        if revert:
            tx.state = "reverted"
            if row is not None and row.state == "taken":
                self.answer(tx.request_id, EffectFailed(tx.request_id, FailureClass.HARD,
                                                        "execution reverted"))
            return
        self.blocks += 1
        tx.state, tx.block, tx.confirmed, tx.ever_mined = "mined", self.blocks, False, True
        if row is not None and row.state == "taken":
            self.answer(tx.request_id, EffectSucceeded(tx.request_id, {"tx_hash": tx.tx_hash}))

    @precondition(lambda self: self.txs_in("pool"))
    @rule(pick=st.integers(0, 5), revert=st.booleans())
    def chain_mines(self, pick: int, revert: bool) -> None:
        txs = self.txs_in("pool")
        tx = txs[pick % len(txs)]
        # only a first spend never mined reverts (its allowance or balance fell short)
        self.mine(tx, revert=revert and tx.kind == "spend" and not tx.ever_mined
                  and tx.request_id == self.saga.data.get("first"))

    @precondition(lambda self: self.txs_in("pool"))
    @rule(pick=st.integers(0, 5), for_good=st.booleans())
    def chain_drops(self, pick: int, for_good: bool) -> None:
        txs = self.txs_in("pool")
        tx = txs[pick % len(txs)]
        # a spend never mined may stay out for good (its adapter replaced it, nonce taken...)
        tx.state = "dead" if for_good and tx.kind == "spend" and not tx.ever_mined \
            else "dropped"

    @precondition(lambda self: self.txs_in("dropped"))
    @rule(pick=st.integers(0, 5))
    def adapter_rebroadcasts(self, pick: int) -> None:
        txs = self.txs_in("dropped")
        txs[pick % len(txs)].state = "pool"

    def evidence(self, tx: Tx) -> e.ChainEvidence:
        return e.ChainEvidence(chain_id=100, block_number=tx.block,
                               block_hash=f"0x{tx.block:064x}", tx_hash=tx.tx_hash,
                               log_index=0)

    def confirm(self, tx: Tx) -> None:
        """The listener sees the transaction's log at depth."""
        tx.confirmed = True
        ev = self.evidence(tx)
        if tx.kind == "spend":
            self.execute(c.ConfirmSpend(command_id=f"log:{ev.block_hash}:0", payment_id=PID,
                                        at=self.now, account=SAFE, amount=eure(tx.amount),
                                        evidence=ev), source="chain")
        self.match_refunds()

    def match_refunds(self) -> None:
        """A refund transfer is confirmed once its submission (its tx hash) is recorded; seen
        earlier, it waits unmatched (as the listener keeps it)."""
        for tx in self.txs_in("mined"):
            if tx.kind != "refund" or not tx.confirmed:
                continue
            refund = self.payment().refunds.get(tx.refund_id)
            ev = self.evidence(tx)
            if refund is None or tx.tx_hash not in refund.tx_hashes or refund.evidence == ev:
                continue
            self.execute(c.ConfirmRefund(command_id=f"log:{ev.block_hash}:0", payment_id=PID,
                                         at=self.now, refund_id=tx.refund_id,
                                         amount=eure(tx.amount), evidence=ev), source="chain")

    @precondition(lambda self: any(not tx.confirmed for tx in self.txs_in("mined")))
    @rule(pick=st.integers(0, 5))
    def listener_confirms(self, pick: int) -> None:
        txs = [tx for tx in self.txs_in("mined") if not tx.confirmed]
        self.confirm(txs[pick % len(txs)])

    @precondition(lambda self: self.reorgs < MAX_REORGS and self.txs_in("mined"))
    @rule(pick=st.integers(0, 5))
    def chain_reorgs(self, pick: int) -> None:
        """The block of a mined transaction leaves the canonical chain: the transaction goes
        back to the pool, and the listener retracts what it confirmed from that block."""
        self.reorgs += 1
        txs = self.txs_in("mined")
        tx = txs[pick % len(txs)]
        ev = self.evidence(tx)
        was_confirmed = tx.confirmed
        tx.state, tx.confirmed = "pool", False
        if not was_confirmed:
            return
        payment = self.payment()
        reason = f"reorg: block {ev.block_hash} orphaned"
        cid = f"retract:{ev.block_hash}:0"
        if tx.kind == "spend" and payment.rests_on(ev):
            self.execute(c.RetractSpend(command_id=cid, payment_id=PID, at=self.now,
                                        evidence=ev, reason=reason), source="chain")
        refund = payment.refunds.get(tx.refund_id)
        if tx.kind == "refund" and refund is not None and refund.evidence == ev:
            self.execute(c.RetractRefund(command_id=cid, payment_id=PID, at=self.now,
                                         refund_id=tx.refund_id, evidence=ev, reason=reason),
                         source="chain")

    # -- quiescence -----------------------------------------------------------------------------
    def step_to_quiescence(self) -> bool:
        """One step of letting everything finish; False when nothing is left to do."""
        for command in list(self.inbox):
            if self.deliver(command):
                self.inbox.remove(command)
                return True
        if self.feed_one():
            return True
        for row in self.pending():
            self.take(row)
            return True
        if self.slow_chain and self.fire_next_timer():
            return True
        for tx in self.txs_in("pool", "dropped"):
            self.mine(tx)
            return True
        for tx in self.txs_in("mined"):
            if not tx.confirmed:
                self.confirm(tx)
                return True
        if self.fire_next_timer():
            return True
        if self.saga.status is Status.STUCK:  # a person retries it (`cardpay exceptions retry`)
            self.tell(RetryRequested())
            return True
        if self.payment().network.status is Network.AUTHORIZED:
            self.now = max(self.now, self.expires_at)
            return self.sweep()
        return False

    def fire_next_timer(self) -> bool:
        if not self.timers:
            return False
        name = min(self.timers, key=lambda n: (self.timers[n], n))
        self.now = max(self.now, self.timers.pop(name))
        self.tell(TimerFired(name))
        return True

    @rule()
    def everything_settles(self) -> None:
        for _ in range(2_000):
            if not self.step_to_quiescence():
                break
        else:
            raise AssertionError("no quiescence after 2000 steps")
        self.check_books()

    def teardown(self) -> None:
        if self.stream:
            self.everything_settles()

    def scenarios(self) -> None:
        """What the run went through (`--hypothesis-show-statistics`), to see the model reach
        the cases it is for."""
        for ev in self.stream:
            match ev:
                case e.RefundRequested(reason="spend after reversal"):
                    event("a spend landed after the payment was reversed")
                case e.SpendRetracted():
                    event("a spend was retracted by a reorg")
                case e.RefundRetracted():
                    event("a refund was retracted by a reorg")
                case e.PaymentCleared():
                    event("the payment was cleared")
        if any(tx.kind == "spend" and tx.state == "mined"
               and tx.request_id != self.saga.data.get("first") for tx in self.txs.values()):
            event("an incremental spend landed")
        if len([tx for tx in self.txs.values() if tx.kind == "spend"]) > 1:
            event("more than one spend transaction")
        for x in self.exceptions:
            event(f"exception {x.reason}")

    def check_books(self) -> None:
        self.scenarios()
        assert self.refused == [], self.refused
        assert self.saga.status is Status.RUNNING, (self.saga.status, self.saga.problem)
        assert self.saga.waiting is None and not self.saga.data.get("queue")
        canonical = self.txs_in("mined")
        paid = sum(tx.amount for tx in canonical if tx.kind == "spend")
        refunded = sum(tx.amount for tx in canonical if tx.kind == "refund")
        payment = self.payment()
        # the aggregate's books are the chain's
        assert (payment.spent.units if payment.spent else 0) == paid * CENT
        assert (payment.refunded.units if payment.refunded else 0) == refunded * CENT
        assert all(r.confirmed for r in payment.refunds.values()), "a refund was never paid"
        # one request per refund: a refund sent under two requests could be paid twice
        requests: dict[str, set[str]] = {}
        for tx in self.txs.values():
            if tx.kind == "refund":
                requests.setdefault(tx.refund_id, set()).add(tx.request_id)
        assert all(len(r) == 1 for r in requests.values()), requests
        # the network's books (what it sent) are the aggregate's network side
        assert payment.network.cleared_units == self.net_cleared * CENT
        assert payment.network.returned_units == self.net_returned * CENT
        owed_to_network = self.net_cleared - self.net_returned
        stuck = [x for x in self.exceptions if x.reason == "compensation_failed"]
        assert not stuck or self.advice_failures >= POLICY.max_attempts
        reasons = [x.reason for x in self.exceptions if x not in stuck]
        if self.mode is OverClearing.INCREMENTAL_SPEND and not self.topup_timed_out:
            assert reasons == [], reasons
            assert paid - refunded == owed_to_network, (paid, refunded, owed_to_network)
        else:
            assert set(reasons) <= {"over_clearing"}, reasons
            owed = sum(int(x.context["owed"]) for x in self.exceptions if x not in stuck) // CENT
            assert not reasons or self.short_seen
            assert paid - refunded + owed == owed_to_network, (paid, refunded, owed,
                                                               owed_to_network)


TestThreeParties = ThreeParties.TestCase
TestThreeParties.settings = settings(
    max_examples=int(os.environ.get("CARDPAY_MODEL_EXAMPLES", "150")),
    stateful_step_count=int(os.environ.get("CARDPAY_MODEL_STEPS", "40")),
    deadline=None, suppress_health_check=[HealthCheck.too_slow],
    # CARDPAY_MODEL_SHRINK=0: report the first failing walk as found (shrinking can take minutes)
    phases=[p for p in Phase if os.environ.get("CARDPAY_MODEL_SHRINK") != "0"
            or p not in (Phase.shrink, Phase.explain)])

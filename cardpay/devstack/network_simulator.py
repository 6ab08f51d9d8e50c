"""A card-network simulator: the network's side, for tests, the demo and load.

Given the cards it may use, a payment count and a seed, it sends a seeded workload of every
message type to a running cardpay API (`network_workload`), signed with the Standard Webhooks
scheme, and keeps its own oracle of what cardpay must answer and end with (`network_oracle`).

Authorizations go first, one at a time in order: each answer decides what follows (an approval
gets a lifecycle, a decline none) and moves the oracle's holds. The asynchronous messages follow,
reordered and duplicated as asked, within what cardpay must accept. A seeded fraction of the
authorizations can be answered "too late" (`late_answers`): whatever cardpay answered, the network
stood in for it after its deadline and declined, and says so with an `authorization_advice` of
approved amount 0 (reason `issuer_timeout`), sent with the later messages. An approval it came
too late for opens a hold that the advice releases: nothing else follows, and what the Safe spent
must come back (the oracle expects the hold released, the payment declined). A request that gets a 5xx or
no answer is sent again with the same webhook id and body (re-signed: the timestamp is part of
the signature) after a bounded backoff; that is what the id is for. A 401 stops the run: the
secret is not the API's, and nothing else would be accepted either.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from standardwebhooks.webhooks import Webhook

from cardpay.devstack.network_oracle import (
    Expected,
    Ledger,
    Oracle,
    PaymentModel,
    SimCard,
    card_totals,
    currency_totals,
)
from cardpay.devstack.network_workload import (
    ASYNC_KINDS,
    LATE_REASON,
    Message,
    Payment,
    Workload,
    check_order,
    duplicate_picks,
    plan,
    reorder,
    with_duplicates,
)
from domain.money import FIAT_TOKENS, Currency


class SimulatorError(Exception):
    """The run cannot go on; the message is one line for the user."""


class CardsFileError(SimulatorError):
    pass


class ApiUnreachable(SimulatorError):
    pass


class SignatureRefused(SimulatorError):
    pass


# -- cards -----------------------------------------------------------------------------------------
_FIAT_OF_TOKEN = {token.code.lower(): fiat for fiat, token in FIAT_TOKENS.items()}
_FIAT = {fiat.code.lower(): fiat for fiat in FIAT_TOKENS}


def _minor_units(base_units: int, decimals: int, fiat: Currency) -> int:
    """Token base units as whole fiat minor units, rounded down (a hold is whole cents)."""
    shift = decimals - fiat.decimals
    return base_units // 10**shift if shift >= 0 else base_units * int(10 ** -shift)


def card_from_record(record: Any, number: int) -> SimCard:
    """A card from one object of `cardpay cards list --json` (amounts: strings of token base
    units next to `decimals`); `CardsFileError` names what is wrong."""
    where = f"card {number}"
    if not isinstance(record, dict):
        raise CardsFileError(f"{where} is not a JSON object")
    try:
        card_id = record["card_id"]
        code = str(record["currency"]).lower()
        fiat = _FIAT_OF_TOKEN.get(code) or _FIAT.get(code)
        if not isinstance(card_id, str) or not card_id or fiat is None:
            raise CardsFileError(f"{where}: card_id must be text and currency one of "
                                 "EURe, GBPe, USDCe (or EUR, GBP, USD)")
        decimals = int(record.get("decimals", fiat.decimals))
        balance = _minor_units(int(record.get("balance") or 0), decimals, fiat)
        left = record.get("allowance_left")
        allowance = None if left is None else _minor_units(int(left), decimals, fiat)
        status = str(record.get("status", "active"))
        if status not in ("active", "frozen", "closed"):
            raise CardsFileError(f"{where}: status {status!r} is not active, frozen or closed")
        limit = record.get("velocity_limit")
        safe, token = record.get("safe"), record.get("token")
        return SimCard(card_id, fiat, balance, allowance, status,
                       frozenset(int(m) for m in record.get("blocked_mccs") or ()),
                       None if limit is None else int(limit),
                       f"{safe}:{token}".lower() if safe and token else None)
    except KeyError as exc:
        raise CardsFileError(f"{where} has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CardsFileError(f"{where}: {exc}") from None


def load_cards(path: Path) -> list[SimCard]:
    """The cards of a file written by `cardpay cards list --json`."""
    try:
        records = json.loads(path.read_text())
    except OSError as exc:
        raise CardsFileError(f"cannot read cards file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CardsFileError(f"cards file {path} is not JSON ({exc})") from None
    if not isinstance(records, list) or not records:
        raise CardsFileError(f"cards file {path} must be a non-empty JSON list of cards, as "
                             "`cardpay cards list --json` prints")
    return [card_from_record(r, n) for n, r in enumerate(records, 1)]


# -- sending ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivery:
    """What one message got: the last status and answer (None: never answered)."""

    status: int | None
    answer: Any
    attempts: int
    timestamp: int
    error: str | None = None


class Sender(Protocol):
    def send(self, message: Message) -> Delivery: ...


@dataclass(slots=True)
class HttpSender:
    """Signs and posts messages to `api` with `client`, retrying 5xx and connection errors."""

    client: httpx.Client
    api: str
    secret: str
    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    _hook: Webhook = field(init=False)

    def __post_init__(self) -> None:
        self._hook = Webhook(self.secret)
        self.api = self.api.rstrip("/")

    def headers(self, message: Message, timestamp: int) -> dict[str, str]:
        signature = self._hook.sign(message.webhook_id, datetime.fromtimestamp(timestamp, UTC),
                                    message.body.decode())
        return {"webhook-id": message.webhook_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": signature, "content-type": "application/json"}

    def send(self, message: Message) -> Delivery:
        error: str | None = None
        status: int | None = None
        answer: Any = None
        timestamp = 0
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                self.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 2)))
            timestamp = int(self.clock())
            try:
                reply = self.client.post(self.api + message.path, content=message.body,
                                         headers=self.headers(message, timestamp))
            except httpx.TransportError as exc:
                status, answer, error = None, None, f"{type(exc).__name__}: {exc}"
                continue
            status, error = reply.status_code, None
            try:
                answer = reply.json()
            except ValueError:
                answer = reply.text
            if status == 401:
                reason = answer.get("reason") if isinstance(answer, dict) else answer
                raise SignatureRefused(f"the API refused the signature of {message.webhook_id} "
                                       f"(401 {reason}): is the secret one of the API's "
                                       "CARDPAY_WEBHOOK_SECRETS?")
            if status < 500:
                return Delivery(status, answer, attempt, timestamp)
        if status is None:
            raise ApiUnreachable(f"no answer from {self.api} after {self.attempts} attempts "
                                 f"({error})")
        return Delivery(status, answer, self.attempts, timestamp, error)


# -- the run ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Sent:
    """One request as sent (a line of sent.jsonl)."""

    seq: int
    message: Message
    delivery: Delivery
    duplicate: bool = False
    reordered: bool = False
    expected: dict[str, Any] | None = None
    matches: bool | None = None

    def line(self) -> dict[str, Any]:
        m, d = self.message, self.delivery
        return {"seq": self.seq, "webhook_id": m.webhook_id, "path": m.path, "type": m.type,
                "payment_id": m.payment_id or None, "duplicate": self.duplicate,
                "reordered": self.reordered, "attempts": d.attempts,
                "webhook_timestamp": d.timestamp, "status": d.status, "answer": d.answer,
                "error": d.error, "expected": self.expected, "matches": self.matches,
                "body": m.body.decode()}


@dataclass(slots=True)
class Run:
    """The outcome: every request, the oracle's expectations and the disagreements."""

    seed: int
    payments: int
    day: date
    duplicates: float
    reorder: float
    late_answers: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    """Synchronous answers that differ from the oracle's."""
    duplicate_differences: list[str] = field(default_factory=list)
    """Webhook ids whose repeat got another status or answer than the first delivery."""
    refused: list[dict[str, Any]] = field(default_factory=list)
    """Messages that got no 200 (after retries): cardpay must accept everything the network
    sends here."""

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.duplicate_differences or self.refused)

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for s in self.sent:
            key = str(s.delivery.status)
            statuses[key] = statuses.get(key, 0) + 1
        currencies = {code: {k: totals[k] for k in (
            "authorization_requests", "approved", "declined", "cleared", "reversed", "returned",
            "net")} for code, totals in self.expected.get("currencies", {}).items()}
        return {
            "ok": self.ok, "seed": self.seed, "payments": self.payments,
            "day": self.day.isoformat(),
            "requests": len(self.sent),
            "duplicates_sent": sum(1 for s in self.sent if s.duplicate),
            "reordered": sum(1 for s in self.sent if s.reordered),
            "answered_late": sum(1 for s in self.sent if s.message.type == "authorization_advice"
                                 and s.message.payload.get("reason") == LATE_REASON
                                 and not s.duplicate),
            "retried": sum(1 for s in self.sent if s.delivery.attempts > 1),
            "statuses": dict(sorted(statuses.items())),
            "mismatches": len(self.mismatches),
            "duplicate_differences": len(self.duplicate_differences),
            "refused": len(self.refused),
            "currencies": currencies,
        }

    def write(self, out: Path) -> None:
        """sent.jsonl (every request, in order), expected.json (the oracle's), summary.json."""
        out.mkdir(parents=True, exist_ok=True)
        with (out / "sent.jsonl").open("w") as f:
            for s in self.sent:
                f.write(json.dumps(s.line(), ensure_ascii=False) + "\n")
        (out / "expected.json").write_text(json.dumps(self.expected, indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(
            {**self.summary(), "mismatch_list": self.mismatches,
             "duplicate_difference_list": self.duplicate_differences,
             "refused_list": self.refused}, indent=2) + "\n")


Progress = Callable[[int, int], None]


def simulate(cards: Sequence[SimCard], *, payments: int, seed: int, sender: Sender,
             duplicates: float = 0.0, reorder_fraction: float = 0.0, late_answers: float = 0.0,
             day: date | None = None, progress: Progress | None = None,
             after_authorizations: Callable[[], None] | None = None) -> Run:
    """Send the seeded workload through `sender`, compare each synchronous answer with the
    oracle, and return the run (its `expected` is the oracle's document, see `expectations`).

    `after_authorizations` runs between the authorization requests and everything the network
    sends later (advices, clearings, returns, reports): the time the chain side of the approved
    payments takes in real life (their clearings come a day later)."""
    if not all(0 <= f <= 1 for f in (duplicates, reorder_fraction, late_answers)):
        raise ValueError("duplicates, reorder and late answers are fractions between 0 and 1")
    day = day or datetime.now(UTC).date()
    run = Run(seed, payments, day, duplicates, reorder_fraction, late_answers)
    workload = Workload(cards, seed, day, payments)
    oracle, ledger = Oracle(cards), Ledger()
    scenarios = plan(cards, payments, workload.rng("plan"))
    synchronous = [s for s in scenarios if s.kind not in ASYNC_KINDS]
    repeat = duplicate_picks(len(synchronous), duplicates, workload.rng("dup-auth"))
    late = duplicate_picks(len(synchronous), late_answers, workload.rng("late"))
    first_answers: dict[str, tuple[int | None, Any]] = {}
    decisions: dict[str, Expected] = {}
    requests: dict[str, str] = {}
    later: list[Message] = []
    total = len(synchronous) + len(repeat)
    step = 0

    def record(message: Message, delivery: Delivery, *, duplicate: bool,
               reordered: bool = False, expected: dict[str, Any] | None = None,
               matches: bool | None = None) -> None:
        nonlocal step
        run.sent.append(Sent(len(run.sent) + 1, message, delivery, duplicate, reordered,
                             expected, matches))
        seen = first_answers.get(message.webhook_id)
        if duplicate and seen is not None and seen != (delivery.status, delivery.answer):
            run.duplicate_differences.append(message.webhook_id)
        first_answers.setdefault(message.webhook_id, (delivery.status, delivery.answer))
        if not duplicate and delivery.status != 200:
            run.refused.append({"webhook_id": message.webhook_id, "type": message.type,
                                "status": delivery.status, "answer": delivery.answer})
        step += 1
        if progress is not None:
            progress(step, total)

    sync_number = 0
    for scenario in scenarios:
        if scenario.kind in ASYNC_KINDS:
            sent, opened = workload.network_only(scenario, oracle)
            card = sent[0].payload["card_id"]
            currency = sent[0].payload["currency"]
            key = sent[0].payload.get("clearing_id") or sent[0].payload.get("authorization_id")
            if key is not None:
                ledger.add(PaymentModel(str(key), card, currency, scenario.kind,
                                        scenario.lifecycle if opened else None))
            later += sent
            if opened is not None:
                later += workload.lifecycle(opened, scenario.index)
            continue
        message = workload.authorization(scenario, oracle)
        p = message.payload
        expected = oracle.expect(p["authorization_id"], p["card_id"], p["amount"],
                                 p["currency"], int(p["merchant"]["mcc"]),
                                 p["partial_approval_supported"])
        delivery = sender.send(message)
        answer = delivery.answer if isinstance(delivery.answer, dict) else {}
        wanted = expected.answer()
        matches = delivery.status == 200 and answer == wanted
        if not matches:
            run.mismatches.append({"authorization_id": p["authorization_id"],
                                   "card_id": p["card_id"], "expected": wanted,
                                   "status": delivery.status, "answer": delivery.answer})
        record(message, delivery, duplicate=False, expected=wanted, matches=matches)
        if sync_number in repeat:
            record(message, sender.send(message), duplicate=True, expected=wanted)
        approved = int(answer.get("approved_amount") or 0) \
            if delivery.status == 200 and answer.get("approved") is True else 0
        too_late = approved > 0 and sync_number in late  # a late decline would change nothing
        sync_number += 1
        decisions[p["authorization_id"]] = expected
        requests[p["authorization_id"]] = p["card_id"]
        model = ledger.add(PaymentModel(
            p["authorization_id"], p["card_id"], p["currency"], scenario.kind,
            scenario.lifecycle if approved and not too_late else None, wanted))
        if approved:
            oracle.approved(p["card_id"], approved)  # held until the advice comes (later)
            model.open(approved)
        else:
            model.decline()
        if too_late:
            later.append(workload.stand_in_decline(message))
        elif approved:
            assert scenario.lifecycle is not None
            later += workload.lifecycle(Payment(
                p["authorization_id"], p["card_id"], p["currency"], approved, p["merchant"],
                message.at, scenario.lifecycle), scenario.index)

    if after_authorizations is not None:
        after_authorizations()
    natural = sorted(later, key=lambda m: m.at)  # stable: a payment's messages keep their order
    check_order(natural)
    for m in natural:
        ledger.apply(m.payload)
    reports = workload.settlement_reports(natural)
    order, moved = reorder(natural, reorder_fraction, workload.rng("reorder"))
    check_order(order)
    final = with_duplicates([*order, *reports], duplicates, workload.rng("dup-events"))
    total = step + len(final)
    for message, duplicate in final:
        record(message, sender.send(message), duplicate=duplicate,
               reordered=message.webhook_id in moved and not duplicate)
    run.expected = expectations(run, cards, decisions, requests, natural, reports, ledger)
    return run


def expectations(run: Run, cards: Sequence[SimCard], decisions: dict[str, Expected],
                 requests: dict[str, str], messages: Sequence[Message],
                 reports: Sequence[Message], ledger: Ledger) -> dict[str, Any]:
    """expected.json: per currency, per card and per payment, what cardpay must show."""
    currencies: dict[str, Any] = {}
    codes = sorted({c.currency.code for c in cards} | {d.currency for d in decisions.values()})
    def currency(m: Message) -> str:  # an expiry names no currency: its payment's
        return str(m.payload.get("currency") or ledger.payments[m.payment_id].currency)

    for code in codes:
        totals = currency_totals(code, [d for d in decisions.values() if d.currency == code],
                                 [m.payload for m in messages if currency(m) == code], ledger)
        report = next((r.payload for r in reports if r.payload["currency"] == code), None)
        currencies[code] = {**totals, "settlement_report": report}
    return {
        "format": 1, "seed": run.seed, "payment_count": run.payments, "day": run.day.isoformat(),
        "duplicates": run.duplicates, "reorder": run.reorder, "late_answers": run.late_answers,
        "bodies_sha256": hashlib.sha256(b"\n".join(
            s.message.body for s in run.sent if not s.duplicate)).hexdigest(),
        "currencies": currencies,
        "cards": card_totals(cards, decisions, requests, ledger),
        "payments": ledger.documents(),
        "unmatched_returns": [{"card_id": c, "currency": cur, "amount": a}
                              for c, cur, a in ledger.unmatched_returns],
    }

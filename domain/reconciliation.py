"""Three-way reconciliation of one settlement day and currency, pure: the chain, our ledger and
the card network's settlement report, side by side, and every difference between them (a break).

Which payments and postings belong to day D is the shell's to gather and ADR 0017's to state:
the payments of D's batch (and any the ledger posted to network payable on D, and any whose
chain events were recorded on D that are in no batch), with their chain movements whenever they
happened. This module only compares what it is given.

Why three comparisons and not one: the network's report only has totals (VSS-110 lines), so a
payment can only be pinned down between the chain and the ledger (per chain movement: the
ledger's `:onchain` transfer carries the event's id) and between the ledger and the batch's
items (per payment: what the ledger posted to network payable against what the network counts
of that payment); the items are then checked against the report's totals. A break in the first
two names its payments; a totals break can only name the whole batch.

Every amount is an integer of the currency's token base units (the chain's and the ledger's unit;
the report's fiat minor units convert upward exactly), so nothing is rounded to compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from domain import events as e
from domain.money import Currency, Money, fiat_currency, to_token, token_for
from domain.settlement import Figures, SettlementItem, report_figures

KNOWN_LINES = frozenset({("issuer", "interchange"), ("issuer", "reimbursement_fees"),
                         ("total", "total")})
"""The report lines a batch is matched and booked from (ADR 0014); any other line with money
or a count in it is something no payment of ours explains."""


class BreakKind(StrEnum):
    """What disagrees. `amount` of a break is the first side named minus the second."""

    CHAIN_NOT_IN_LEDGER = "chain_not_in_ledger"
    """A chain movement of a payment (spend, refund, or a reorg's retraction) that the ledger
    lacks or books for another amount: chain minus ledger."""
    LEDGER_NOT_ON_CHAIN = "ledger_not_on_chain"
    """A ledger `:onchain` transfer no recorded chain movement explains: ledger minus chain."""
    CHAIN_TRANSFER_UNMATCHED = "chain_transfer_unmatched"
    """A transfer out of the settlement account that matches no payment's refund (the listener
    kept it in `unmatched_transfers`); the ledger has nothing for it: chain minus ledger."""
    LEDGER_NOT_IN_REPORT = "ledger_not_in_report"
    """What the ledger posted to network payable for a payment on the day differs from what the
    network counts of it (its batch items, which the report totals): ledger minus network."""
    REPORT_NOT_IN_LEDGER = "report_not_in_ledger"
    """A payment the batch counts that the ledger posted nothing to network payable for on the
    day: network minus ledger."""
    REPORT_LINE_UNEXPLAINED = "report_line_unexplained"
    """A report line no payment of ours explains: a line cardpay does not book (another
    business mode or amount type) that is not empty, or an interchange line on a day with no
    payments of ours: report minus ours."""
    TOTALS_DIFFER = "totals_differ"
    """The batch's items (and the day's unplaced returns) against the report's interchange
    line: count, credit or debit differ. Net of ours minus the report's."""
    REPORT_MISSING = "report_missing"
    """The day has payments the network counts but no report: ours minus nothing."""


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainMovement:
    """Tokens a payment moved on chain, as the listener recorded it: `amount` > 0 into the
    settlement account (a spend, a refund's retraction), < 0 out of it (a refund, a spend's
    retraction). `key` is `<payment id>:<event version>`, the id the ledger's transfer for it
    starts with."""

    key: str
    payment_id: str
    amount: int
    what: str
    tx_hash: str
    at: datetime


@dataclass(frozen=True, slots=True)
class UnmatchedTransfer:
    """A transfer out of the settlement account that matched no submitted refund."""

    key: str
    tx_hash: str
    recipient: str
    amount: int
    """Tokens that left the settlement account (positive)."""
    at: datetime


@dataclass(frozen=True, slots=True)
class LedgerPosting:
    """One ledger transfer as the reconciliation reads it: `ref` is the payment id (a return no
    payment explains: `return:<return id>`); `amount` is signed — for a chain transfer > 0 into
    `onchain_settlement`, for a network-payable posting > 0 owed to the network."""

    transfer_id: str
    ref: str
    amount: int
    code: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DayInputs:
    """Everything the three sides say about one settlement day and (fiat) currency."""

    day: date
    currency: str
    items: Sequence[SettlementItem] = ()
    """The batch's items, and the day's unplaced returns as items without a payment (key
    `return:<id>`)."""
    report: Mapping[str, Any] | None = None
    """The latest stored report of the day (`settlement_reports.report`)."""
    batch_status: str | None = None
    chain: Sequence[ChainMovement] = ()
    unmatched: Sequence[UnmatchedTransfer] = ()
    ledger_chain: Sequence[LedgerPosting] = ()
    """The ledger's `card_spend_onchain` transfers of the day's payments (whenever booked)."""
    ledger_payable: Sequence[LedgerPosting] = ()
    """The posted changes to network payable booked on the day for payment messages."""


def chain_movements(history: Iterable[e.DomainEvent]) -> list[ChainMovement]:
    """A payment's movements on chain from its recorded events, as the ledger books them
    (`domain.ledger.payments.chain_movements`): a retraction undoes the spend or refund it
    names; a spend's retraction without an amount takes the retracted spend's."""
    events = list(history)
    spends = {ev.evidence: ev.amount for ev in events if isinstance(ev, e.PaymentSpent)}
    out: list[ChainMovement] = []
    for ev in events:
        match ev:
            case e.PaymentSpent(amount=amount, evidence=proof):
                out.append(_moved(ev, amount.units, "spend", proof.tx_hash))
            case e.PaymentRefunded(amount=amount, evidence=proof):
                out.append(_moved(ev, -amount.units, "refund", proof.tx_hash))
            case e.RefundRetracted(amount=amount, evidence=proof):
                out.append(_moved(ev, amount.units, "refund_retracted", proof.tx_hash))
            case e.SpendRetracted(amount=retracted, evidence=proof):
                spent = retracted if retracted is not None else spends.get(proof)
                if spent is not None:
                    out.append(_moved(ev, -spent.units, "spend_retracted", proof.tx_hash))
    return [m for m in out if m.amount != 0]


def _moved(ev: e.DomainEvent, amount: int, what: str, tx_hash: str) -> ChainMovement:
    return ChainMovement(f"{ev.stream_id}:{ev.version}", ev.stream_id, amount, what, tx_hash,
                         ev.occurred_at)


# -- outputs --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Break:
    kind: BreakKind
    amount: int
    """Token base units: the first side the kind names minus the second."""
    payments: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class ChainFigures:
    """What the chain did for the day's payments (over their whole life) and what matched none."""

    spent: int = 0
    """Into the settlement account, net of retracted spends."""
    refunded: int = 0
    """Out of it to the payments' Safes, net of retracted refunds."""
    unmatched_out: int = 0
    """Out of it, matching no payment."""

    @property
    def net(self) -> int:
        return self.spent - self.refunded - self.unmatched_out


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    onchain: int = 0
    """Net into `onchain_settlement` for the day's payments (their `:onchain` transfers)."""
    payable: int = 0
    """Posted to network payable on the day for payment messages (clearings, force posts,
    financial authorizations and return reversals less returns), in token units."""


@dataclass(frozen=True, slots=True)
class NetworkFigures:
    ours: Figures = field(default_factory=Figures)
    """The batch's items and unplaced returns, as the network counts them (token units)."""
    report: Figures | None = None
    """The report's issuer interchange line (token units); None: no report."""
    report_id: str | None = None
    fees: int = 0
    batch_status: str | None = None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    day: date
    currency: str
    token: str
    decimals: int
    payments: tuple[str, ...]
    chain: ChainFigures
    ledger: LedgerFigures
    network: NetworkFigures
    breaks: tuple[Break, ...] = field(default=())

    @property
    def clean(self) -> bool:
        return not self.breaks


# -- the comparison -------------------------------------------------------------------------------
def reconcile(inputs: DayInputs) -> Reconciliation:
    """The three sides' figures and every break between them (none: the day reconciles)."""
    fiat = fiat_currency(inputs.currency)
    token = token_for(fiat)
    units = _Units(fiat)
    payments = sorted({m.payment_id for m in inputs.chain}
                      | {i.payment_id for i in inputs.items if i.payment_id}
                      | {p.ref for p in inputs.ledger_payable if not p.ref.startswith("return:")})
    breaks = [*_chain_vs_ledger(inputs, units.text), *_ledger_vs_network(inputs, units),
              *_network_vs_report(inputs, units, tuple(payments))]
    report = None if inputs.report is None else report_figures(inputs.report)
    chain = ChainFigures(
        spent=sum(m.amount for m in inputs.chain if m.what.startswith("spend")),
        refunded=-sum(m.amount for m in inputs.chain if m.what.startswith("refund")),
        unmatched_out=sum(u.amount for u in inputs.unmatched))
    ledger = LedgerFigures(onchain=sum(p.amount for p in inputs.ledger_chain),
                           payable=sum(p.amount for p in inputs.ledger_payable))
    network = NetworkFigures(
        ours=units.figures(_ours(inputs)),
        report=None if report is None else units.figures(report.interchange),
        report_id=None if report is None else report.report_id,
        fees=0 if report is None else units(report.fees), batch_status=inputs.batch_status)
    return Reconciliation(inputs.day, inputs.currency, token.code, token.decimals,
                          tuple(payments), chain, ledger, network, tuple(breaks))


class _Units:
    """Fiat minor units -> the token's base units (exact, ADR 0009)."""

    def __init__(self, fiat: Currency) -> None:
        self._fiat = fiat
        self._token = token_for(fiat)

    def __call__(self, minor: int) -> int:
        return to_token(Money(minor, self._fiat)).units

    def figures(self, f: Figures) -> Figures:
        return Figures(f.count, self(f.credit), self(f.debit))

    def text(self, units: int) -> str:
        """Token base units for a person: `4.00 EURe`, every significant digit kept."""
        whole, _, frac = f"{Money(units, self._token).to_decimal():f}".partition(".")
        return f"{whole}.{frac.rstrip('0').ljust(2, '0')} {self._token.code}"

    def fiat_text(self, minor: int) -> str:
        return self.text(self(minor))


def _ours(inputs: DayInputs) -> Figures:
    total = Figures()
    for item in inputs.items:
        total = total + item.figures
    return total


def _chain_vs_ledger(inputs: DayInputs, show: Callable[[int], str]) -> list[Break]:
    """Per chain movement: the ledger's transfer `<key>:onchain` for the same amount and way."""
    booked = {p.transfer_id.removesuffix(":onchain"): p for p in inputs.ledger_chain}
    out: list[Break] = []
    for m in inputs.chain:
        posting = booked.pop(m.key, None)
        ledger = 0 if posting is None else posting.amount
        if ledger != m.amount:
            has = "nothing" if posting is None else show(ledger)
            out.append(Break(BreakKind.CHAIN_NOT_IN_LEDGER, m.amount - ledger, (m.payment_id,),
                             f"{m.what} {m.key} in {m.tx_hash} moved {show(m.amount)} on chain, "
                             f"the ledger booked {has}"))
    for key, posting in sorted(booked.items()):
        out.append(Break(BreakKind.LEDGER_NOT_ON_CHAIN, posting.amount, (posting.ref,),
                         f"ledger transfer {posting.transfer_id} moved {show(posting.amount)}; "
                         f"no chain movement {key} was recorded"))
    for u in inputs.unmatched:
        out.append(Break(BreakKind.CHAIN_TRANSFER_UNMATCHED, -u.amount, (),
                         f"{show(u.amount)} left the settlement account to {u.recipient} in "
                         f"{u.tx_hash}, matching no payment's refund; the ledger has nothing"))
    return out


def _ledger_vs_network(inputs: DayInputs, units: _Units) -> list[Break]:
    """Per payment: posted to network payable on the day against what the batch counts."""
    ledger: dict[str, int] = {}
    for p in inputs.ledger_payable:
        ledger[p.ref] = ledger.get(p.ref, 0) + p.amount
    counted: dict[str, int] = {}
    for item in inputs.items:
        ref = item.payment_id or item.key
        owed = units(item.figures.debit) - units(item.figures.credit)
        counted[ref] = counted.get(ref, 0) + owed
    out: list[Break] = []
    for ref in sorted(ledger.keys() | counted.keys()):
        posted, network = ledger.get(ref), counted.get(ref)
        if posted == network:
            continue
        involved = () if ref.startswith("return:") else (ref,)
        if posted is None:
            out.append(Break(BreakKind.REPORT_NOT_IN_LEDGER, network or 0, involved,
                             f"the batch counts {units.text(network or 0)} owed for {ref}; the "
                             "ledger posted nothing to network payable for it on the day"))
        else:
            out.append(Break(BreakKind.LEDGER_NOT_IN_REPORT, posted - (network or 0), involved,
                             f"the ledger posted {units.text(posted)} owed to network payable "
                             f"for {ref} on the day; the batch counts "
                             f"{units.text(network or 0)}"))
    return out


def _network_vs_report(inputs: DayInputs, units: _Units,
                       payments: tuple[str, ...]) -> list[Break]:
    ours = _ours(inputs)
    counted = bool(inputs.items)
    if inputs.report is None:
        if not counted:
            return []
        return [Break(BreakKind.REPORT_MISSING, units(ours.net), payments,
                      f"no settlement report for {inputs.day} {inputs.currency}; the batch "
                      f"counts {ours.count} messages, net {units.fiat_text(ours.net)}")]
    out: list[Break] = []
    for line in inputs.report.get("lines", []):
        mode, kind = str(line["business_mode"]), str(line["amount_type"])
        count, credit, debit = (int(line["count"]), int(line["credit_amount"]),
                                int(line["debit_amount"]))
        empty = count == 0 and credit == 0 and debit == 0
        unknown = (mode, kind) not in KNOWN_LINES
        # with no payment of ours on the day, the interchange line is the one unexplained (the
        # fees and the total follow from it)
        if not empty and (unknown or (not counted and (mode, kind) == ("issuer", "interchange"))):
            out.append(Break(BreakKind.REPORT_LINE_UNEXPLAINED, units(credit - debit), (),
                             f"report {inputs.report.get('report_id')} line {mode}/{kind}: "
                             f"{count} messages, net {units.fiat_text(credit - debit)} that no "
                             "payment of ours explains"))
    if not counted:
        return out
    theirs = report_figures(inputs.report).interchange
    if ours != theirs:
        diff = ours.minus(theirs)
        out.append(Break(BreakKind.TOTALS_DIFFER, units(ours.net) - units(theirs.net), payments,
                         f"ours minus the report's interchange: count {diff.count}, credit "
                         f"{units.fiat_text(diff.credit)}, debit {units.fiat_text(diff.debit)}"))
    return out

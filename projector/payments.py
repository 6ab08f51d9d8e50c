"""The `payments` read model: one row per payment, evolved by its events (pure functions).

A row holds the whole lifecycle finance and ops ask about: the chain side (status, what was spent
and refunded on chain, the spend and refund transactions), the network side (what the network
authorized, still holds, cleared, reversed, released, over-cleared and returned, its status,
merchant and MCC, the hold's expiry) and the settlement (batch, when). The network figures are
`domain.card_network.NetworkState`'s, applied by its own `apply`, so the read model cannot count
them differently from the aggregate. Timestamps are the events' `occurred_at`.

Applying an event whose version the row already has is a no-op (feeds deliver at least once). An
event that skips a version is refused with `OutOfOrder`; the runner quarantines it.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import events as e
from domain.card_network import NETWORK_EVENTS, Network, NetworkState
from domain.money import Currency
from projector.errors import OutOfOrder


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: str
    status: str
    """The chain side: new, authorized, held, cleared, reversed, settled, retracted."""
    last_version: int
    account: str | None = None
    currency: str | None = None
    decimals: int | None = None
    authorized: int | None = None
    """What was authorized: our approval, an approving advice, grown by increments."""
    spent: int = 0
    cleared: int | None = None
    """The chain side's clearing (the hold posted for the network's final amount)."""
    refunded: int = 0
    spend_tx: str | None = None
    # -- the network side (token base units, like every amount here)
    network_status: str = Network.NONE.value
    merchant: str | None = None
    mcc: str | None = None
    held: int = 0
    posted: int = 0
    network_cleared: int = 0
    """Every clearing, force post and financial authorization the network sent."""
    reversed: int = 0
    released: int = 0
    over_cleared: int = 0
    returned: int = 0
    expires_at: datetime | None = None
    # -- the rest of the lifecycle
    refund_txs: tuple[str, ...] = ()
    """The refunds' transactions that rest on chain now (a reorg takes one away)."""
    settlement_batch: str | None = None
    settled: int = 0
    """What the network settled for it: cleared net of returns when its batch was paid out."""
    first_at: datetime | None = None
    authorized_at: datetime | None = None
    cleared_at: datetime | None = None
    settled_at: datetime | None = None
    last_at: datetime | None = None


def is_duplicate(row: PaymentRow | None, event: e.DomainEvent) -> bool:
    return row is not None and event.version <= row.last_version


def evolve(row: PaymentRow | None, event: e.DomainEvent) -> PaymentRow:
    expected = 1 if row is None else row.last_version + 1
    if event.version != expected:
        raise OutOfOrder(
            f"payment {event.stream_id}: got version {event.version}, expected {expected}"
        )
    if row is None:
        row = PaymentRow(payment_id=event.stream_id, status="new", last_version=0,
                         first_at=event.occurred_at)
    # one new row per event (a rebuild evolves a million): the network side's changes, then the
    # chain side's, both read from the row before the event and merged, the chain side's last
    changes: dict[str, Any] = {"last_version": event.version, "last_at": event.occurred_at}
    if isinstance(event, NETWORK_EVENTS):
        changes.update(_network(row, event))
    changes.update(_chain(row, event))
    values = dict(zip(_FIELDS, _ALL(row), strict=True))
    values.update(changes)
    return PaymentRow(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(PaymentRow))
_ALL = operator.attrgetter(*_FIELDS)


def _chain(row: PaymentRow, event: e.DomainEvent) -> dict[str, Any]:
    """The chain side's and the lifecycle's fields after `event`."""
    match event:
        case e.PaymentAuthorized():
            return {"status": "authorized", "account": event.account,
                    "currency": event.amount.currency.code,
                    "decimals": event.amount.currency.decimals}
        case e.PaymentSpent():
            # a payment may be spent more than once (an incremental spend, a spend landing after
            # the payment was reversed): the spends add up; the status moves forward only
            return {"status": "held" if row.status in ("new", "authorized", "retracted")
                    else row.status, "account": event.account,
                    "currency": event.amount.currency.code,
                    "decimals": event.amount.currency.decimals,
                    "spent": row.spent + event.amount.units,
                    "spend_tx": row.spend_tx or event.evidence.tx_hash}
        case e.PaymentCleared():
            return {"status": "cleared", "cleared": event.amount.units}
        case e.PaymentReversed():
            return {"status": "reversed"}
        case e.PaymentRefunded():
            return {"refunded": row.refunded + event.amount.units,
                    "refund_txs": (*row.refund_txs, event.evidence.tx_hash)}
        case e.PaymentSettled():
            return {"status": "settled", "settlement_batch": event.batch_id,
                    "settled": (row.network_cleared - row.returned
                                if row.network_cleared else row.cleared or 0),
                    "settled_at": event.occurred_at}
        case e.SpendRetracted():
            spent = 0 if event.amount is None else row.spent - event.amount.units
            if spent > 0:
                return {"spent": spent}
            return {"status": "retracted" if row.status == "held" else row.status, "spent": 0,
                    "spend_tx": None}
        case e.RefundRetracted():
            txs = list(row.refund_txs)
            if event.evidence.tx_hash in txs:
                txs.remove(event.evidence.tx_hash)
            return {"refunded": row.refunded - event.amount.units, "refund_txs": tuple(txs)}
        case _:
            return {}  # refund requested/submitted change nothing here; network events: above


def _network(row: PaymentRow, event: e.DomainEvent) -> dict[str, Any]:
    """The network side's fields after `event`, by `NetworkState.apply` on the row's figures."""
    state = NetworkState(
        status=Network(row.network_status),
        currency=None if row.currency is None or row.decimals is None
        else Currency(row.currency, row.decimals),
        account=row.account, merchant=row.merchant, mcc=row.mcc, expires_at=row.expires_at,
        hold_opened=row.network_status != Network.NONE.value,
        authorized_units=row.authorized or 0, held_units=row.held, posted_units=row.posted,
        reversed_units=row.reversed, released_units=row.released,
        cleared_units=row.network_cleared, over_cleared_units=row.over_cleared,
        returned_units=row.returned)
    if not state.apply(event):
        return {}
    opened = state.authorized_units > 0 or state.status is not Network.NONE
    first_approval = row.authorized_at is None and state.authorized_units > 0
    first_clearing = row.cleared_at is None and state.cleared_units > 0
    return {
        "network_status": state.status.value, "merchant": state.merchant, "mcc": state.mcc,
        "account": row.account or state.account,
        "currency": state.currency.code if state.currency else row.currency,
        "decimals": state.currency.decimals if state.currency else row.decimals,
        "authorized": state.authorized_units if opened else row.authorized,
        "held": state.held_units, "posted": state.posted_units,
        "reversed": state.reversed_units, "released": state.released_units,
        "network_cleared": state.cleared_units, "over_cleared": state.over_cleared_units,
        "returned": state.returned_units, "expires_at": state.expires_at,
        "authorized_at": event.occurred_at if first_approval else row.authorized_at,
        "cleared_at": event.occurred_at if first_clearing else row.cleared_at}

"""The card network's timers: clearings parked too long, and holds past their validity.

Two things happen with no message to trigger them (issue 7, build 5):

- **A clearing parked before its authorization** (`ClearingParked`) waits for the approval,
  advice or decline that applies it. When none comes within `parked_timeout` (setting
  CARDPAY_PARKED_CLEARING_TIMEOUT), the sweep raises ONE exception for a person: a quarantine row
  (source "network", key `parked_clearing:<payment id>`, reason `parked_clearing_unmatched`) with
  the payment id, the parked clearings' amounts and since when. Running the sweep again adds
  nothing. If the authorization arrives later, the clearing still applies as it always did, and
  the next sweep marks the exception resolved ("authorization arrived ...").
- **A hold past its validity** (7 days; 30 for MCC 3501-3999, 7011, 7512) is released in the
  ledger AND recorded on the Payment (`ExpireAuthorization(by_network=False)`, the same path as a
  message that finds its payment's hold lapsed), so the aggregate and the ledger agree. A clearing
  that comes after is accepted as a "clearing after expiry".

Finding candidates is cheap: due holds are the ledger's pending transfers by `expires_at` (a
partial index on pending ones); parked payments are a small watch table fed from the
`ClearingParked` events after a stored position (a partial index on that type), checked again
only when the payment has new events or its timeout passes. Nothing scans the whole event log.

One unit of work per batch (`batch_size` holds and as many parked payments), behind a lock that
serializes sweeps (the API's background loop and `cardpay network sweep` may run at once). The
due payments are locked in id order before anything is written, as a message for one of them
would lock it; a payment whose expiry fails is rolled back alone (a savepoint) and retried by the
next sweep. This module knows no database (ADR 0007): the repository is the `NetworkTimers` port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cardpay.errors import CardpayError
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.ports import QuarantineItem, UnitOfWork
from domain.card_network import ParkedClearing
from domain.errors import DomainError
from domain.ledger.model import PendingStatus
from domain.payment import Payment

log = logging.getLogger(__name__)

SOURCE = "network"
PARKED_REASON = "parked_clearing_unmatched"
EXPIRY_REFUSED = "hold_expiry_refused"
SWEEP_LOCK = "network-sweep"
DEFAULT_PARKED_TIMEOUT = timedelta(hours=72)
"""An authorization overtaken by its clearing is a delayed delivery; processors retry a webhook
for up to 3 days (Stripe), so after 72 h no retry will bring it and a person must look
(docs/card-network-payment.md, "Timers")."""
DEFAULT_BATCH = 100


def parked_key(payment_id: str) -> str:
    """The exception's quarantine key: one per payment, whatever the sweep runs."""
    return f"parked_clearing:{payment_id}"


@dataclass(frozen=True, slots=True)
class DueHold:
    """A pending ledger transfer whose timeout has passed; `payment_id` is its `user_data` (the
    payment stream that opened it; "" when none did)."""

    transfer_id: str
    payment_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ParkedWatch:
    """A payment that had a clearing parked: when, which of its versions the sweep last looked
    at, and when its exception was raised (None: not yet)."""

    payment_id: str
    parked_since: datetime
    checked_version: int = 0
    exception_at: datetime | None = None


class NetworkTimers(Protocol):
    """What the sweep reads and keeps (Postgres: `PostgresNetworkTimers`; fake:
    `tests.fakes.timers.FakeNetworkTimers`; one contract suite for both)."""

    def due_holds(self, now: datetime, limit: int,
                  after: tuple[datetime, str] | None = None) -> list[DueHold]:
        """Pending ledger transfers with `expires_at <= now`, earliest first (then by id), at
        most `limit`; only those after `after` = (expires_at, transfer id) when given, so a
        sweep walks past holds it could not release instead of meeting them in every batch."""
        ...

    def watch_new_parked(self, limit: int) -> int:
        """Watch the payments of the `ClearingParked` events recorded since the last call (at
        most `limit` events; a payment already watched stays as it is). Returns how many events
        were read: fewer than `limit` means caught up."""
        ...

    def parked_to_check(self, cutoff: datetime, limit: int) -> list[ParkedWatch]:
        """Watched payments worth a look: with events newer than `checked_version`, or parked
        at or before `cutoff` with no exception raised yet. Oldest first, at most `limit`."""
        ...

    def checked(self, payment_id: str, version: int,
                exception_at: datetime | None = None) -> None:
        """The sweep looked at the payment up to `version` (and raised its exception at
        `exception_at`, when given; a raised exception stays recorded)."""
        ...

    def unwatch(self, payment_id: str) -> None:
        """The payment has no parked clearing any more."""
        ...


class SweepUnitOfWork(UnitOfWork, Protocol):
    """The handlers' unit of work with the timers' repository on it."""

    @property
    def timers(self) -> NetworkTimers: ...

    def __enter__(self) -> SweepUnitOfWork: ...


@dataclass(slots=True)
class SweepResult:
    """What one sweep did (summed over its batches)."""

    holds_expired: int = 0
    """Ledger holds released (each also recorded on its payment when it has one)."""
    payments_expired: list[str] = field(default_factory=list)
    exceptions_raised: list[str] = field(default_factory=list)
    """Payment ids whose parked clearing became an exception now."""
    exceptions_resolved: list[str] = field(default_factory=list)
    """Payment ids whose authorization arrived after the exception."""
    parked_watched: int = 0
    """`ClearingParked` events newly read."""
    failures: list[str] = field(default_factory=list)
    """Holds left for the next sweep, with why."""
    batches: int = 0

    def add(self, other: SweepResult) -> None:
        self.holds_expired += other.holds_expired
        self.payments_expired += other.payments_expired
        self.exceptions_raised += other.exceptions_raised
        self.exceptions_resolved += other.exceptions_resolved
        self.parked_watched += other.parked_watched
        self.failures += other.failures
        self.batches += other.batches

    def as_json(self) -> dict[str, Any]:
        return {"holds_expired": self.holds_expired, "payments_expired": self.payments_expired,
                "exceptions_raised": self.exceptions_raised,
                "exceptions_resolved": self.exceptions_resolved,
                "parked_watched": self.parked_watched, "failures": self.failures,
                "batches": self.batches}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NetworkSweep:
    """`run()` sweeps until nothing is due (or `max_batches`); the clock is a port (tests move
    time). `effects` is the network's `CardNetworkEffects`: an expiry is booked exactly as a
    message's would be."""

    def __init__(self, uow_factory: Callable[[], SweepUnitOfWork], effects: CardNetworkEffects,
                 *, parked_timeout: timedelta = DEFAULT_PARKED_TIMEOUT,
                 clock: Callable[[], datetime] = _utcnow, batch_size: int = DEFAULT_BATCH,
                 max_batches: int = 100) -> None:
        if parked_timeout <= timedelta(0) or batch_size < 1 or max_batches < 1:
            raise ValueError("parked_timeout, batch_size and max_batches must be positive")
        self._uow = uow_factory
        self._effects = effects
        self._timeout = parked_timeout
        self._clock = clock
        self._batch = batch_size
        self._max_batches = max_batches

    def run(self) -> SweepResult:
        total = SweepResult()
        after: tuple[datetime, str] | None = None
        for _ in range(self._max_batches):
            result, more, after = self.sweep_batch(after)
            total.add(result)
            if not more:
                break
        return total

    def sweep_batch(self, after: tuple[datetime, str] | None = None
                    ) -> tuple[SweepResult, bool, tuple[datetime, str] | None]:
        """One unit of work, holds after `after` only. Returns what it did, whether a limit was
        reached (another batch may find more), and the last hold it looked at."""
        now = self._clock()
        result = SweepResult(batches=1)
        with self._uow() as uow:
            uow.lock(SWEEP_LOCK)
            result.parked_watched = uow.timers.watch_new_parked(self._batch)
            watched = uow.timers.parked_to_check(now - self._timeout, self._batch)
            due = uow.timers.due_holds(now, self._batch, after)
            # a message for one of these payments locks it first too: no lock cycle with it
            for payment_id in sorted({h.payment_id for h in due if h.payment_id}):
                uow.lock(f"payment:{payment_id}")
            self._check_parked(uow, watched, now, result)
            for hold in due:
                self._expire(uow, hold, now, result)
            uow.commit()
        last = (due[-1].expires_at, due[-1].transfer_id) if due else after
        progressed = len(due) + result.parked_watched + len(watched)
        full = max(result.parked_watched, len(watched), len(due)) >= self._batch
        return result, full and progressed > 0, last

    # -- parked clearings ------------------------------------------------------------------------
    def _check_parked(self, uow: SweepUnitOfWork, watched: Sequence[ParkedWatch], now: datetime,
                      result: SweepResult) -> None:
        histories = uow.events.load_many([w.payment_id for w in watched])
        for watch in watched:
            history = histories.get(watch.payment_id, [])
            payment = Payment.rehydrate(watch.payment_id, history)
            since = payment.parked_since()
            if since is None:  # applied (or never there): nothing waits any more
                uow.timers.unwatch(watch.payment_id)
                if watch.exception_at is not None:
                    self._resolve(uow, payment, now)
                    result.exceptions_resolved.append(watch.payment_id)
                continue
            raised: datetime | None = None
            if watch.exception_at is None and since + self._timeout <= now:
                uow.quarantine.add(QuarantineItem(
                    source=SOURCE, key=parked_key(watch.payment_id), reason=PARKED_REASON,
                    payload=_parked_payload(payment, since, now, self._timeout)))
                raised = now
                result.exceptions_raised.append(watch.payment_id)
            uow.timers.checked(watch.payment_id, len(history), raised)

    @staticmethod
    def _resolve(uow: SweepUnitOfWork, payment: Payment, now: datetime) -> None:
        key = parked_key(payment.id)
        for row in uow.quarantine.list(SOURCE, include_resolved=False):
            if row.key == key:
                uow.quarantine.resolve(row.id, (
                    f"authorization arrived (status {payment.network.status.value}); the parked "
                    f"clearing was applied; seen by the sweep at {now.isoformat()}"))

    # -- holds -----------------------------------------------------------------------------------
    def _expire(self, uow: SweepUnitOfWork, hold: DueHold, now: datetime,
                result: SweepResult) -> None:
        if self._status(uow, hold) is not PendingStatus.PENDING:
            return  # resolved by a message between the read and the payment's lock
        try:
            with uow.savepoint():
                recorded = self._expire_payment(uow, hold, now)
                uow.ledger.expire_pending(now, [hold.transfer_id])
        except DomainError as exc:
            # the payment refuses the expiry (it says the hold is still valid): the ledger's
            # timeout is what the network follows, so the hold lapses and a person looks
            log.warning("hold %s lapsed but payment %s refused the expiry: %s",
                        hold.transfer_id, hold.payment_id, exc)
            uow.ledger.expire_pending(now, [hold.transfer_id])
            uow.quarantine.add(QuarantineItem(
                source=SOURCE, key=f"hold_expiry:{hold.transfer_id}", reason=EXPIRY_REFUSED,
                payload={"transfer_id": hold.transfer_id, "payment_id": hold.payment_id,
                         "expires_at": hold.expires_at.isoformat(), "error": str(exc)}))
            recorded = False
        except CardpayError as exc:  # EffectUnavailable (ledger out of step), ConcurrencyConflict
            log.warning("hold %s of payment %s not expired now (next sweep retries): %s",
                        hold.transfer_id, hold.payment_id, exc)
            result.failures.append(f"{hold.transfer_id}: {exc}")
            return
        if self._status(uow, hold) is PendingStatus.EXPIRED:
            result.holds_expired += 1
        if recorded:
            result.payments_expired.append(hold.payment_id)

    @staticmethod
    def _status(uow: SweepUnitOfWork, hold: DueHold) -> PendingStatus | None:
        found = uow.ledger.lookup_transfers([hold.transfer_id])
        return found[0].status if found else None

    def _expire_payment(self, uow: SweepUnitOfWork, hold: DueHold, now: datetime) -> bool:
        """Record the expiry on the hold's payment (which also releases the hold); False when
        the transfer belongs to no payment stream."""
        if not hold.payment_id or not uow.events.load(hold.payment_id):
            return False
        answer = self._effects.expire_by_timer(uow, hold.payment_id, now)
        return "AuthorizationExpired" in answer["events"]


def _parked_payload(payment: Payment, since: datetime, now: datetime,
                    timeout: timedelta) -> dict[str, Any]:
    parked: list[ParkedClearing] = payment.network.parked
    currency = parked[0].amount.currency if parked else None
    return {
        "payment_id": payment.id,
        "parked_since": since.isoformat(),
        "raised_at": now.isoformat(),
        "timeout_seconds": int(timeout.total_seconds()),
        "currency": None if currency is None else currency.code,
        "decimals": None if currency is None else currency.decimals,
        "total": sum(p.amount.units for p in parked),
        "clearings": [{"clearing_id": p.message_id, "amount": p.amount.units,
                       "final": p.final, "at": p.at.isoformat()} for p in parked],
    }

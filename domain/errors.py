"""The domain's exception family: every rule the model enforces fails with one of these."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error raised by the domain model."""


class InvalidAmount(DomainError):
    """An amount that is not a whole number of minor units, or otherwise not money."""


class CurrencyMismatch(DomainError):
    """Arithmetic or comparison across two currencies."""


class InexactConversion(DomainError):
    """A conversion that would lose minor units."""


class InvalidTransition(DomainError):
    """A command that the payment's current state does not allow."""


class RefundExceedsCapture(InvalidTransition):
    """A refund larger than what is left of the captured amount."""


class UnknownEventType(DomainError):
    """A stored or received event whose type this version of the model does not know."""


class NaiveTimestamp(DomainError):
    """A time without a UTC offset; the model only records UTC-aware times."""


class InvalidNetworkMessage(DomainError):
    """A card-network message whose facts contradict each other (a report whose net is not its
    credits minus its debits, a partial approval the network did not allow...)."""


class AuthorizationNotFound(InvalidTransition):
    """A network message that needs its authorization (a reversal, an increment, an expiry) came
    for a payment whose authorization has not arrived. The handler retries it later or quarantines
    it (the network's ORIGINAL_NOT_FOUND); clearings are parked instead, since they cannot be
    refused."""


class AuthorizationClosed(InvalidTransition):
    """A message that needs an open hold (an increment, an advice) came after the hold was
    resolved (cleared, reversed, expired or declined)."""


class AuthorizationNotExpired(InvalidTransition):
    """An expiry before the authorization's `expires_at`: a timer fired early or read another
    payment's deadline."""


class ReturnExceedsClearing(InvalidTransition):
    """A merchant return larger than what was cleared net of earlier returns (or a return reversal
    larger than what was returned)."""

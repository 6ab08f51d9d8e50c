"""The ledger's unit: token base units, and exact conversion from and to fiat minor units.

The network speaks fiat minor units (EUR cents); the chain and the ledger speak token base units
(EURe has 18 decimals, so 1 cent = 10**16 base units). Fiat to token is always exact. Token to
fiat is exact or refused; `split_to_fiat` is for the places that must book anyway: it returns the
whole minor units and the remainder in base units, which the caller books to the ROUNDING account
of the ledger, so nothing is rounded away unseen.
"""

from __future__ import annotations

from domain.errors import CurrencyMismatch
from domain.money import EURE, FIAT_TOKENS, GBPE, USDCE, Currency, Money, to_token, token_for

TOKEN_FOR_FIAT = FIAT_TOKENS
FIAT_FOR_TOKEN: dict[Currency, Currency] = {v: k for k, v in TOKEN_FOR_FIAT.items()}
LEDGERS: dict[str, Currency] = {t.code: t for t in TOKEN_FOR_FIAT.values()}
"""Ledger name (the token code) -> the token."""

ledger_for = token_for
"""The token ledger of a fiat currency (`domain.money.token_for`)."""

to_ledger_units = to_token
"""A network amount in fiat minor units as base units of its token (always exact)."""

__all__ = ["EURE", "FIAT_FOR_TOKEN", "GBPE", "LEDGERS", "TOKEN_FOR_FIAT", "USDCE", "ledger_for",
           "split_to_fiat", "to_fiat", "to_ledger_units"]


def to_fiat(amount: Money) -> Money:
    """Token base units as fiat minor units; raises `InexactConversion` if not whole."""
    return amount.convert(_fiat_for(amount.currency))


def split_to_fiat(amount: Money) -> tuple[Money, Money]:
    """(whole fiat minor units, the rest in token base units), the rest to be booked to ROUNDING.

    Truncates toward zero, so the parts add back up exactly:
    `to_ledger_units(fiat) + rest == amount`.
    """
    fiat = amount.convert(_fiat_for(amount.currency), exact=False)
    return fiat, amount - to_ledger_units(fiat)


def _fiat_for(token: Currency) -> Currency:
    try:
        return FIAT_FOR_TOKEN[token]
    except KeyError:
        raise CurrencyMismatch(f"{token} is not a ledger token") from None

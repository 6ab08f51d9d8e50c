"""The ledger's unit: token base units, and exact conversion from and to fiat minor units.

The network speaks fiat minor units (EUR cents); the chain and the ledger speak token base units
(EURe has 18 decimals, so 1 cent = 10**16 base units). Fiat to token is always exact. Token to
fiat is exact or refused; `split_to_fiat` is for the places that must book anyway: it returns the
whole minor units and the remainder in base units, which the caller books to the ROUNDING account
of the ledger, so nothing is rounded away unseen.
"""

from __future__ import annotations

from domain.errors import CurrencyMismatch
from domain.money import EUR, GBP, USD, Currency, Money

EURE = Currency("EURe", 18)
GBPE = Currency("GBPe", 18)
USDCE = Currency("USDCe", 6)

TOKEN_FOR_FIAT: dict[Currency, Currency] = {EUR: EURE, GBP: GBPE, USD: USDCE}
FIAT_FOR_TOKEN: dict[Currency, Currency] = {v: k for k, v in TOKEN_FOR_FIAT.items()}
LEDGERS: dict[str, Currency] = {t.code: t for t in TOKEN_FOR_FIAT.values()}
"""Ledger name (the token code) -> the token."""


def ledger_for(fiat: Currency) -> Currency:
    try:
        return TOKEN_FOR_FIAT[fiat]
    except KeyError:
        raise CurrencyMismatch(f"no token ledger for {fiat}") from None


def to_ledger_units(amount: Money) -> Money:
    """A network amount in fiat minor units as base units of its token (always exact)."""
    return amount.convert(ledger_for(amount.currency))


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

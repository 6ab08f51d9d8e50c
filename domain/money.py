"""Money: integer minor units of one currency or token, never floats.

A `Currency` is either a fiat currency (EUR, 2 decimals) or an on-chain token (EURe, 18 decimals;
USDCe, 6 decimals). Arithmetic is only defined within one currency; converting between a token's
base units and its fiat minor units is explicit and exact (or says it is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from domain.errors import CurrencyMismatch, InexactConversion, InvalidAmount


@dataclass(frozen=True, slots=True)
class Currency:
    """A unit of account: `code` names it (EUR, EURe, USDCe), `decimals` sets its minor unit."""

    code: str
    decimals: int

    def __post_init__(self) -> None:
        if not self.code or not self.code.isprintable() or " " in self.code:
            raise InvalidAmount(f"currency code {self.code!r} is not a short printable name")
        if not 0 <= self.decimals <= 36:
            raise InvalidAmount(f"{self.code}: decimals {self.decimals} outside 0..36")

    def __str__(self) -> str:
        return self.code


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An exact amount: `units` minor units (base units for a token) of `currency`."""

    units: int
    currency: Currency

    def __post_init__(self) -> None:
        # bool is an int subclass; a float must never sneak in as an amount.
        if type(self.units) is not int:
            raise InvalidAmount(
                f"amount must be an int of minor units, got {type(self.units).__name__}"
            )

    @classmethod
    def zero(cls, currency: Currency) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: Currency) -> Money:
        """Parse a decimal string in major units ("8.50") exactly; too many decimals is an error."""
        if not isinstance(text, str):
            raise InvalidAmount(f"amount text must be a str, got {type(text).__name__}")
        try:
            value = Decimal(text)
        except ArithmeticError as exc:
            raise InvalidAmount(f"{text!r} is not a decimal amount") from exc
        if not value.is_finite():
            raise InvalidAmount(f"{text!r} is not a finite amount")
        # The default context keeps 28 digits and would silently round an 18-decimal token amount;
        # shift with as many digits as the text has, and trap anything that is not exact.
        exact = Context(
            prec=len(value.as_tuple().digits), traps=[InvalidOperation, Overflow, Inexact]
        )
        try:
            scaled = value.scaleb(currency.decimals, exact)
        except ArithmeticError as exc:
            raise InvalidAmount(f"{text!r} is out of range for {currency}") from exc
        if scaled != scaled.to_integral_value():
            raise InvalidAmount(
                f"{text!r} has more than {currency.decimals} decimals for {currency}"
            )
        return cls(int(scaled), currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.units + other.units, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.units - other.units, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.units, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.units < other.units

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.units <= other.units

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.units > other.units

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.units >= other.units

    @property
    def is_zero(self) -> bool:
        return self.units == 0

    @property
    def is_negative(self) -> bool:
        return self.units < 0

    def to_decimal(self) -> Decimal:
        # Built from the digits, not with scaleb: context arithmetic would round past 28 digits.
        sign, digits, _ = Decimal(self.units).as_tuple()
        return Decimal((sign, digits, -self.currency.decimals))

    def __str__(self) -> str:
        return f"{self.to_decimal():f} {self.currency}"

    def convert(self, to: Currency, *, exact: bool = True) -> Money:
        """Re-express the amount with `to`'s decimals (1 EURe == 1 EUR, a token pegged to its fiat).

        Going to fewer decimals must be exact unless `exact=False`, which truncates toward zero.
        """
        shift = to.decimals - self.currency.decimals
        if shift >= 0:
            return Money(self.units * 10**shift, to)
        factor = 10**-shift
        quotient, remainder = divmod(abs(self.units), factor)
        if remainder and exact:
            raise InexactConversion(f"{self} cannot be expressed exactly in {to}")
        return Money(quotient if self.units >= 0 else -quotient, to)


EUR = Currency("EUR", 2)
GBP = Currency("GBP", 2)
USD = Currency("USD", 2)

EURE = Currency("EURe", 18)
GBPE = Currency("GBPe", 18)
USDCE = Currency("USDCe", 6)

FIAT_TOKENS: dict[Currency, Currency] = {EUR: EURE, GBP: GBPE, USD: USDCE}
"""The token a card in each fiat currency spends (Monerium EURe/GBPe, bridged USDC): the network
speaks fiat minor units, the chain token base units, 1 token = 1 unit of its fiat."""

FIAT_CURRENCIES: dict[str, Currency] = {c.code: c for c in FIAT_TOKENS}
"""The ISO 4217 codes the card network may send, by code."""


def fiat_currency(code: str) -> Currency:
    """The fiat currency of an ISO code the network sent; an unknown code is refused."""
    try:
        return FIAT_CURRENCIES[code]
    except KeyError:
        raise InvalidAmount(f"currency {code!r} is not one of "
                            f"{', '.join(sorted(FIAT_CURRENCIES))}") from None


def token_for(fiat: Currency) -> Currency:
    """The token a card in `fiat` spends; a currency with no card token is refused."""
    try:
        return FIAT_TOKENS[fiat]
    except KeyError:
        raise CurrencyMismatch(f"no card token for {fiat}") from None


def to_token(amount: Money) -> Money:
    """A network amount in fiat minor units as token base units (exact: tokens have more
    decimals than their fiat, 8.50 EUR = 8.5 * 10**18 EURe base units)."""
    return amount.convert(token_for(amount.currency))

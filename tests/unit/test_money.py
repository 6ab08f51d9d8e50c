"""Money: exact integer minor units, one currency at a time, exact conversions or a clear error."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import CurrencyMismatch, DomainError, InexactConversion, InvalidAmount
from domain.money import EUR, USD, Currency, Money

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)

currencies = st.sampled_from([EUR, USD, EURE, USDCE, Currency("JPY", 0), Currency("X36", 36)])
# Wider than any real balance and than the 28 digits of Decimal's default context.
units = st.integers(min_value=-(10**40), max_value=10**40)


# -- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [8.5, 1.0, True, False, Decimal("8.50"), "850", None])
def test_units_must_be_an_int(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        Money(bad, EUR)  # type: ignore[arg-type]


def test_int_units_are_kept_exactly() -> None:
    assert Money(10**30, EURE).units == 10**30
    assert Money(-1, EUR).is_negative
    assert Money.zero(EURE) == Money(0, EURE)
    assert Money.zero(EURE).is_zero


def test_money_is_frozen() -> None:
    money = Money(1, EUR)
    with pytest.raises(AttributeError):
        money.units = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("code", "decimals"), [("", 2), ("E UR", 2), ("EUR\n", 2), ("EUR", -1), ("EUR", 37)]
)
def test_currency_rejects_bad_code_or_decimals(code: str, decimals: int) -> None:
    with pytest.raises(InvalidAmount):
        Currency(code, decimals)


def test_errors_belong_to_the_domain_family() -> None:
    for error in (InvalidAmount, CurrencyMismatch, InexactConversion):
        assert issubclass(error, DomainError)


# -- arithmetic within one currency ----------------------------------------------------------------
def test_arithmetic_and_comparison_within_one_currency() -> None:
    a, b = Money(850, EUR), Money(150, EUR)
    assert a + b == Money(1000, EUR)
    assert a - b == Money(700, EUR)
    assert b - a == Money(-700, EUR)
    assert -a == Money(-850, EUR)
    assert b < a
    assert b <= a
    assert a > b
    assert a >= b
    assert a <= Money(850, EUR)
    assert a >= Money(850, EUR)


def test_same_units_in_different_currencies_are_not_equal() -> None:
    assert Money(100, EUR) != Money(100, USD)
    assert Money(100, EUR) != Money(100, Currency("EUR", 3))


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
    ids=["add", "sub", "lt", "le", "gt", "ge"],
)
@pytest.mark.parametrize(
    "other",
    [Money(100, USD), Money(100, EURE), Money(100, Currency("EUR", 3))],
    ids=["USD", "EURe", "EUR-3-decimals"],
)
def test_arithmetic_across_currencies_is_a_mismatch(
    operation: Callable[[Money, Money], object], other: Money
) -> None:
    with pytest.raises(CurrencyMismatch):
        operation(Money(100, EUR), other)


@given(currencies, units, units, units)
def test_addition_is_associative_commutative_and_subtraction_undoes_it(
    currency: Currency, a: int, b: int, c: int
) -> None:
    x, y, z = Money(a, currency), Money(b, currency), Money(c, currency)
    assert (x + y) + z == x + (y + z)
    assert x + y == y + x
    assert (x + y) - y == x
    assert x + Money.zero(currency) == x
    assert x + -x == Money.zero(currency)
    assert (x < y) == (a < b)


# -- parse: exact or an error ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "currency", "expected"),
    [
        ("8.50", EUR, 850),
        ("8.5", EUR, 850),
        ("8", EUR, 800),
        ("-0.01", EUR, -1),
        ("0", EUR, 0),
        ("1E+2", EUR, 10_000),
        ("12.500000", USDCE, 12_500_000),
        ("0.000001", USDCE, 1),
        ("1", EURE, 10**18),
        ("0.000000000000000001", EURE, 1),
        # 30 significant digits: more than Decimal's default 28-digit context keeps.
        ("123456789012.345678901234567891", EURE, 123456789012345678901234567891),
        ("1000000000000.000000000000000001", EURE, 10**30 + 1),
    ],
)
def test_parse_is_exact(text: str, currency: Currency, expected: int) -> None:
    assert Money.parse(text, currency) == Money(expected, currency)


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("8.505", EUR),
        ("0.001", EUR),
        ("0.0000001", USDCE),
        ("0.0000000000000000001", EURE),
        # 31 significant digits, one decimal too many: must not be rounded into range.
        ("1000000000000.0000000000000000001", EURE),
        ("1e-999999999", EUR),
        ("1E+999999999", EUR),
        ("", EUR),
        ("eight", EUR),
        ("8,50", EUR),
        ("8.50 EUR", EUR),
        ("NaN", EUR),
        ("sNaN", EUR),
        ("Infinity", EUR),
        ("-inf", EUR),
    ],
)
def test_parse_rejects_what_it_cannot_represent_exactly(text: str, currency: Currency) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, currency)


@pytest.mark.parametrize("not_text", [8.5, 850, Decimal("8.50"), None])
def test_parse_accepts_only_text(not_text: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(not_text, EUR)  # type: ignore[arg-type]


@given(currencies, units)
def test_parse_of_to_decimal_round_trips(currency: Currency, n: int) -> None:
    money = Money(n, currency)
    assert Money.parse(str(money.to_decimal()), currency) == money
    assert Money.parse(f"{money.to_decimal():f}", currency) == money


@given(currencies, units)
def test_to_decimal_keeps_every_digit(currency: Currency, n: int) -> None:
    value = Money(n, currency).to_decimal()
    # Decimal(str) is exact whatever the context precision; to_decimal must agree with it.
    assert value == Decimal(f"{n}E-{currency.decimals}")
    assert value.as_tuple().exponent == -currency.decimals


def test_str_shows_every_minor_unit() -> None:
    assert str(Money(850, EUR)) == "8.50 EUR"
    assert str(Money(-5, EUR)) == "-0.05 EUR"
    assert str(Money(0, EUR)) == "0.00 EUR"
    assert str(Money(10**30 + 1, EURE)) == "1000000000000.000000000000000001 EURe"


# -- convert: token base units <-> fiat minor units ------------------------------------------------
@pytest.mark.parametrize(
    ("money", "to", "expected"),
    [
        (Money(850, EUR), EURE, Money(8_500_000_000_000_000_000, EURE)),
        (Money(8_500_000_000_000_000_000, EURE), EUR, Money(850, EUR)),
        (Money(1_230_000, USDCE), USD, Money(123, USD)),
        (Money(123, USD), USDCE, Money(1_230_000, USDCE)),
        (Money(-1_230_000, USDCE), USD, Money(-123, USD)),
        (Money(0, EURE), EUR, Money(0, EUR)),
        (Money(850, EUR), EUR, Money(850, EUR)),
    ],
)
def test_convert_exact(money: Money, to: Currency, expected: Money) -> None:
    assert money.convert(to) == expected


@pytest.mark.parametrize(
    "money",
    [
        Money(1, EURE),
        Money(8_500_000_000_000_000_001, EURE),
        Money(-8_500_000_000_000_000_001, EURE),
        Money(1_234_567, USDCE),
        Money(9_999, USDCE),
    ],
)
def test_convert_to_fewer_decimals_must_be_exact(money: Money) -> None:
    fiat = EUR if money.currency == EURE else USD
    with pytest.raises(InexactConversion):
        money.convert(fiat)


@pytest.mark.parametrize(
    ("money", "to", "expected"),
    [
        (Money(1_234_567, USDCE), USD, Money(123, USD)),
        (Money(-1_234_567, USDCE), USD, Money(-123, USD)),  # toward zero, not floor
        (Money(9_999, USDCE), USD, Money(0, USD)),
        (Money(-9_999, USDCE), USD, Money(0, USD)),
        (Money(8_509_999_999_999_999_999, EURE), EUR, Money(850, EUR)),
        (Money(-8_509_999_999_999_999_999, EURE), EUR, Money(-850, EUR)),
    ],
)
def test_convert_inexact_truncates_toward_zero(money: Money, to: Currency, expected: Money) -> None:
    assert money.convert(to, exact=False) == expected


@given(st.sampled_from([(EUR, EURE), (USD, USDCE), (USDCE, EURE), (EUR, USDCE)]), units)
def test_convert_up_then_down_round_trips(pair: tuple[Currency, Currency], n: int) -> None:
    fewer, more = pair
    money = Money(n, fewer)
    up = money.convert(more)
    assert up.currency == more
    assert up.to_decimal() == money.to_decimal()
    assert up.convert(fewer) == money
    assert up.convert(fewer, exact=False) == money


@given(st.sampled_from([(EURE, EUR), (USDCE, USD), (EURE, USDCE)]), units)
def test_convert_down_is_exact_or_says_so(pair: tuple[Currency, Currency], n: int) -> None:
    more, fewer = pair
    money = Money(n, more)
    factor = 10 ** (more.decimals - fewer.decimals)
    truncated = money.convert(fewer, exact=False)
    # Truncation toward zero: never grows in magnitude, loses less than one target minor unit.
    assert abs(truncated.units) * factor <= abs(n) < (abs(truncated.units) + 1) * factor
    assert truncated.units == 0 or (truncated.units > 0) == (n > 0)
    if n % factor == 0:
        assert money.convert(fewer) == truncated
        assert truncated.convert(more) == money
    else:
        with pytest.raises(InexactConversion):
            money.convert(fewer)

"""The network sweep's settings: the parked-clearing timeout is a duration with its unit (a bare
number is refused, never guessed), the interval a number of seconds (0: off)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cardpay.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.parked_clearing_timeout == timedelta(hours=72)
    assert settings.sweep_interval_s == 60


@pytest.mark.parametrize(("raw", "expected"), [
    ("72h", timedelta(hours=72)), ("3d", timedelta(days=3)), ("90m", timedelta(minutes=90)),
    ("3600s", timedelta(hours=1)), (" 2D ", timedelta(days=2))])
def test_timeouts_with_units(raw: str, expected: timedelta) -> None:
    settings = Settings.from_env({"CARDPAY_PARKED_CLEARING_TIMEOUT": raw})
    assert settings.parked_clearing_timeout == expected


@pytest.mark.parametrize("raw", ["72", "0h", "-1h", "1.5h", "h", "3w", "soon"])
def test_timeouts_without_a_usable_unit_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="CARDPAY_PARKED_CLEARING_TIMEOUT"):
        Settings.from_env({"CARDPAY_PARKED_CLEARING_TIMEOUT": raw})


@pytest.mark.parametrize(("raw", "expected"), [("0", 0.0), ("0.5", 0.5), ("300", 300.0)])
def test_intervals(raw: str, expected: float) -> None:
    assert Settings.from_env({"CARDPAY_SWEEP_INTERVAL_S": raw}).sweep_interval_s == expected


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "often"])
def test_bad_intervals_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="CARDPAY_SWEEP_INTERVAL_S"):
        Settings.from_env({"CARDPAY_SWEEP_INTERVAL_S": raw})

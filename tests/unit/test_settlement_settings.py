"""`CARDPAY_SETTLEMENT_CUTOFF`: the daily settlement cut-off, HH:MM UTC, one clear error otherwise."""

from __future__ import annotations

from datetime import UTC, time

import pytest

from cardpay.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("raw", "cutoff"), [(None, time(2, tzinfo=UTC)), ("", time(2, tzinfo=UTC)),
                                             ("23:30", time(23, 30, tzinfo=UTC)),
                                             (" 00:05 ", time(0, 5, tzinfo=UTC))])
def test_the_cut_off_is_read(raw: str | None, cutoff: time) -> None:
    env = {} if raw is None else {"CARDPAY_SETTLEMENT_CUTOFF": raw}
    assert Settings.from_env(env).settlement_cutoff == cutoff


@pytest.mark.parametrize("raw", ["2am", "24:00", "02:60", "2:00"])
def test_a_bad_cut_off_names_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^CARDPAY_SETTLEMENT_CUTOFF: a settlement cut-off "
                                            r"is HH:MM \(UTC\), got "):
        Settings.from_env({"CARDPAY_SETTLEMENT_CUTOFF": raw})

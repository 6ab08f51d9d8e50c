"""The CLI's admin commands on a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _cardpay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_db_upgrade_is_idempotent(make_db: object) -> None:
    from alembic.script import ScriptDirectory

    from cardpay.postgres.engine import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    url = make_db()  # type: ignore[operator]
    for _ in range(2):
        proc = _cardpay("db", "upgrade", env={"CARDPAY_DATABASE_URL": url})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"schema at revision {head}"
    assert head is not None and int(head) >= 3


def test_help_lists_the_commands_and_the_environment() -> None:
    proc = _cardpay("--help")
    assert proc.returncode == 0
    for word in ("demo", "db", "relay", "project", "CARDPAY_DATABASE_URL"):
        assert word in proc.stdout


def test_bad_settings_are_a_clear_error() -> None:
    proc = _cardpay("db", "upgrade", env={"CARDPAY_CONFIRMATIONS": "two"})
    assert proc.returncode == 2
    assert "CARDPAY_CONFIRMATIONS must be an integer" in proc.stderr


def test_relay_without_kafka_says_what_is_missing() -> None:
    proc = _cardpay("relay", env={"CARDPAY_KAFKA_BOOTSTRAP": ""})
    assert proc.returncode == 2
    assert "CARDPAY_KAFKA_BOOTSTRAP" in proc.stderr

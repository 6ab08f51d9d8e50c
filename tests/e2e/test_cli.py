"""The CLI's admin commands on a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    assert proc.stderr == "cardpay db upgrade: CARDPAY_CONFIRMATIONS must be an integer, got 'two'\n"


def test_relay_without_kafka_says_what_is_missing() -> None:
    proc = _cardpay("relay", env={"CARDPAY_KAFKA_BOOTSTRAP": ""})
    assert proc.returncode == 2
    assert "CARDPAY_KAFKA_BOOTSTRAP" in proc.stderr


def test_db_shell_runs_psql_on_the_database(pg_url: str) -> None:
    proc = _cardpay("db", "shell", "--", "-At", "-c", "select count(*) from rm_payments",
                    env={"CARDPAY_DATABASE_URL": pg_url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_db_shell_prints_a_url_without_the_password() -> None:
    proc = _cardpay("db", "shell", "--print-url",
                    env={"CARDPAY_DATABASE_URL": "postgresql://ops:hunter2@127.0.0.1:1/cardpay"})
    assert proc.returncode == 1  # nothing listens on port 1: connecting fails first
    assert "hunter2" not in proc.stdout + proc.stderr


def test_db_shell_print_url_on_the_embedded_server(tmp_path: Path) -> None:
    proc = _cardpay("db", "shell", "--print-url",
                    env={"CARDPAY_DATA_DIR": str(tmp_path), "CARDPAY_DATABASE_URL": ""})
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert url.startswith("postgresql://postgres@/postgres?host=")
    socket_dir = Path(url.split("host=", 1)[1])
    assert socket_dir == tmp_path / "pgdata" or socket_dir.is_dir()

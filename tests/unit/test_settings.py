"""Settings from the environment: defaults, parsing, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardpay.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults_when_nothing_is_set() -> None:
    s = Settings.from_env({})
    assert (s.database_url, s.kafka_bootstrap, s.rpc_url) == (None, None, None)
    assert (s.confirmations, s.max_block_range, s.listener_name) == (2, 2000, "main")
    assert s.kafka_topic == "cardpay.payments"
    assert s.data_dir.name == "cardpay"


def test_values_are_read() -> None:
    s = Settings.from_env({
        "CARDPAY_DATABASE_URL": "postgresql://u:p@db:6543/cardpay",
        "CARDPAY_DATA_DIR": "/srv/cardpay", "CARDPAY_KAFKA_BOOTSTRAP": "k:9092",
        "CARDPAY_KAFKA_TOPIC": "t", "CARDPAY_RPC_URL": "http://node", "CARDPAY_CONFIRMATIONS": "0",
        "CARDPAY_MAX_BLOCK_RANGE": "10", "CARDPAY_LISTENER_NAME": "backfill-2",
    })
    assert s.database_url == "postgresql://u:p@db:6543/cardpay"
    assert s.data_dir == Path("/srv/cardpay")
    assert (s.kafka_bootstrap, s.kafka_topic, s.rpc_url) == ("k:9092", "t", "http://node")
    assert (s.confirmations, s.max_block_range, s.listener_name) == (0, 10, "backfill-2")


@pytest.mark.parametrize("url", [
    "postgresql://cardpay@127.0.0.1/cardpay",
    "postgres://u:p@host:5432/db",
    "postgresql+psycopg://u@host/db",
    "postgresql://postgres@/postgres?host=/tmp/pgdata",
])
def test_postgres_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"CARDPAY_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://u@h/db", "must start with postgresql://, not mysql://"),
    ("localhost:5432/db", "is not a URL"),
    ("postgresql://u:p@host:port/db", "is malformed"),
    ("postgresql://u:p@host:99999/db", "is malformed"),
    ("postgresql:///db", "names no host"),
])
def test_malformed_database_urls_name_the_variable_and_the_form(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"CARDPAY_DATABASE_URL": url})
    message = str(error.value)
    assert message.startswith("CARDPAY_DATABASE_URL ")
    assert says in message
    assert message.endswith("expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")


def test_a_malformed_url_never_echoes_the_password() -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"CARDPAY_DATABASE_URL": "postgresql://u:s3cret@host:port/db"})
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(("env", "message"), [
    ({"CARDPAY_CONFIRMATIONS": "two"}, "CARDPAY_CONFIRMATIONS must be an integer, got 'two'"),
    ({"CARDPAY_CONFIRMATIONS": "-1"}, "CARDPAY_CONFIRMATIONS must be 0 or more, got -1"),
    ({"CARDPAY_MAX_BLOCK_RANGE": "0"}, "CARDPAY_MAX_BLOCK_RANGE must be at least 1, got 0"),
    ({"CARDPAY_MAX_BLOCK_RANGE": "1e3"}, "CARDPAY_MAX_BLOCK_RANGE must be an integer, got '1e3'"),
])
def test_bad_numbers_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(") + "$"):
        Settings.from_env(env)


def test_empty_values_mean_the_default() -> None:
    s = Settings.from_env({"CARDPAY_DATABASE_URL": "", "CARDPAY_CONFIRMATIONS": "",
                           "CARDPAY_RPC_URL": ""})
    assert (s.database_url, s.confirmations, s.rpc_url) == (None, 2, None)


def test_the_metrics_host_is_loopback_unless_told() -> None:
    assert Settings.from_env({}).metrics_host == "127.0.0.1"
    assert Settings.from_env({"CARDPAY_METRICS_HOST": " "}).metrics_host == "127.0.0.1"
    assert Settings.from_env({"CARDPAY_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"

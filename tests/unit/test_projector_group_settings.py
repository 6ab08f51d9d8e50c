"""The projector's consumer-group setting: off by default, named per database, refused where it
cannot work (no Kafka), and the group id it gives."""

from __future__ import annotations

import pytest

from cardpay.bootstrap import kafka_group_id
from cardpay.cli import main as cli
from cardpay.settings import Settings

pytestmark = pytest.mark.unit


def test_no_group_unless_one_is_named() -> None:
    assert Settings.from_env({}).kafka_group is None
    assert Settings.from_env({"CARDPAY_KAFKA_GROUP": "  "}).kafka_group is None
    assert kafka_group_id(Settings.from_env({}), "payments") is None


def test_the_group_id_names_the_group_the_topic_and_the_projector() -> None:
    settings = Settings.from_env({"CARDPAY_KAFKA_GROUP": "prod-eu ",
                                  "CARDPAY_KAFKA_TOPIC": "cardpay.payments"})
    assert kafka_group_id(settings, "payments") == "prod-eu:cardpay.payments:payments"


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["project", "--group", "g"], {}, "needs Kafka"),
    (["project"], {"CARDPAY_KAFKA_GROUP": "g"}, "needs Kafka"),
    (["project", "--group", " "], {"CARDPAY_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "needs a name"),
])
def test_a_group_without_kafka_or_without_a_name_is_refused_before_anything_starts(
        argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CARDPAY_KAFKA_BOOTSTRAP", "CARDPAY_KAFKA_GROUP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err

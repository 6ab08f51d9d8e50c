"""Events to JSON and back: every payment event type, exactly, or a clear error."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import DomainError, UnknownEventType
from domain.events import (
    PAYMENT_EVENTS,
    ChainEvidence,
    DomainEvent,
    PaymentAuthorized,
    PaymentRefunded,
    PaymentSpent,
    RecordedEvent,
)
from domain.money import EUR, Currency, Money
from domain.serialization import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    event_metadata,
    event_payload,
    from_recorded,
    schema_of,
    to_data,
    upcast,
)

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ENVELOPE = {f.name for f in dataclasses.fields(DomainEvent)}

# -- strategies built from each event's type hints, so a new event type is covered automatically --
aware_times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]),
)
currencies = st.one_of(
    st.sampled_from([EUR, EURE, USDCE]),
    st.builds(
        Currency,
        code=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8),
        decimals=st.integers(min_value=0, max_value=36),
    ),
)
money = st.builds(
    Money,
    units=st.one_of(
        st.integers(min_value=-(10**40), max_value=10**40),
        st.just(10**30),
        st.just(2**256 - 1),
    ),
    currency=currencies,
)
evidence = st.builds(
    ChainEvidence,
    chain_id=st.sampled_from([1, 100, 31337]),
    block_number=st.integers(min_value=0, max_value=2**63),
    block_hash=st.text(min_size=1, max_size=66),
    tx_hash=st.text(min_size=1, max_size=66),
    log_index=st.integers(min_value=0, max_value=10_000),
)
BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=40),
    bool: st.booleans(),
    int: st.integers(min_value=0, max_value=2**64),
    datetime: aware_times,
    Money: money,
    Money | None: st.none() | money,
    ChainEvidence: evidence,
}


def events_of(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: BY_TYPE[hints[f.name]] for f in dataclasses.fields(cls)}
    fields["version"] = st.integers(min_value=1, max_value=10**6)
    return st.builds(cls, **fields)


any_event = st.sampled_from(PAYMENT_EVENTS).flatmap(events_of)


def record(event: DomainEvent, data: dict[str, Any] | None = None) -> RecordedEvent:
    """What the event store would hand back: the JSON form after a trip through text."""
    stored = json.loads(json.dumps(to_data(event) if data is None else data, allow_nan=False))
    return RecordedEvent(
        stream_id=event.stream_id,
        version=event.version,
        position=42,
        type=type(event).__name__,
        data=stored,
        recorded_at=T0,
    )


def floats_in(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return []


def authorized(**overrides: Any) -> PaymentAuthorized:
    fields: dict[str, Any] = {
        "stream_id": "pay-1",
        "version": 1,
        "occurred_at": T0,
        "correlation_id": "net-1",
        "causation_id": "cmd-1",
        "account": "0xsafe",
        "amount": Money(10**30, EURE),
        "merchant": "Bakery",
        "mcc": "5462",
        "expires_at": T0 + timedelta(days=7),
    }
    return PaymentAuthorized(**(fields | overrides))


# -- round trips --------------------------------------------------------------------------------
def test_every_payment_event_type_is_registered_by_name() -> None:
    assert set(EVENT_TYPES) == {cls.__name__ for cls in PAYMENT_EVENTS}
    assert all(EVENT_TYPES[cls.__name__] is cls for cls in PAYMENT_EVENTS)


@pytest.mark.parametrize("cls", PAYMENT_EVENTS, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_each_event_type_round_trips(cls: type[DomainEvent], data: st.DataObject) -> None:
    event = data.draw(events_of(cls))
    back = from_recorded(record(event))
    assert type(back) is cls
    assert back == event
    # Equal instants are not enough: the offset written is the offset read.
    assert back.occurred_at.utcoffset() == event.occurred_at.utcoffset()


@given(any_event)
def test_the_json_form_has_no_floats_and_no_envelope_in_the_payload(event: DomainEvent) -> None:
    data = to_data(event)
    json.dumps(data, allow_nan=False)
    assert floats_in(data) == []
    assert set(data) == {"payload", "meta"}
    assert data["payload"] == event_payload(event)
    assert data["meta"] == event_metadata(event)
    assert set(data["payload"]) == {f.name for f in dataclasses.fields(event)} - ENVELOPE
    assert set(data["meta"]) == {"occurred_at", "correlation_id", "causation_id", "schema"}
    assert data["meta"]["schema"] == SCHEMA_VERSION


def test_an_18_decimal_amount_stays_exact() -> None:
    event = authorized(amount=Money(10**30 + 1, EURE))
    data = to_data(event)
    assert data["payload"]["amount"] == {
        "units": "1000000000000000000000000000001",
        "currency": "EURe",
        "decimals": 18,
    }
    back = from_recorded(record(event))
    assert isinstance(back, PaymentAuthorized)
    assert back.amount.units == 10**30 + 1
    assert back.amount.currency == EURE


def test_a_six_decimal_amount_and_chain_evidence_round_trip() -> None:
    event = PaymentRefunded(
        stream_id="pay-1",
        version=7,
        occurred_at=T0,
        correlation_id="net-1",
        causation_id="0x64:0xabc:3",
        refund_id="r1",
        amount=Money(12_345_678, USDCE),
        evidence=ChainEvidence(
            chain_id=100,
            block_number=35_000_000,
            block_hash="0x" + "ab" * 32,
            tx_hash="0x" + "cd" * 32,
            log_index=3,
        ),
    )
    data = to_data(event)
    assert data["payload"]["evidence"] == {
        "chain_id": 100,
        "block_number": 35_000_000,
        "block_hash": "0x" + "ab" * 32,
        "tx_hash": "0x" + "cd" * 32,
        "log_index": 3,
    }
    assert from_recorded(record(event)) == event


def test_times_are_iso_8601_with_their_offset() -> None:
    data = to_data(authorized())
    assert data["meta"]["occurred_at"] == "2024-05-01T12:00:00+00:00"
    assert data["payload"]["expires_at"] == "2024-05-08T12:00:00+00:00"


def test_the_envelope_comes_from_the_record_not_the_payload() -> None:
    event = authorized()
    recorded = record(event)
    moved = RecordedEvent(
        stream_id="pay-2",
        version=9,
        position=recorded.position,
        type=recorded.type,
        data=recorded.data,
        recorded_at=recorded.recorded_at,
    )
    back = from_recorded(moved)
    assert (back.stream_id, back.version) == ("pay-2", 9)
    assert back == dataclasses.replace(event, stream_id="pay-2", version=9)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["PaymentTeleported", "", "paymentauthorized", "DomainEvent", "ChainEvidence"]
)
def test_an_unknown_type_raises_unknown_event_type(name: str) -> None:
    recorded = dataclasses.replace(record(authorized()), type=name)
    with pytest.raises(UnknownEventType):
        from_recorded(recorded)
    assert issubclass(UnknownEventType, DomainError)


@pytest.mark.parametrize("field", ["occurred_at", "expires_at"])
def test_naive_datetimes_are_not_written(field: str) -> None:
    event = authorized(**{field: datetime(2024, 5, 1, 12, 0)})
    with pytest.raises(ValueError, match="naive"):
        to_data(event)


@pytest.mark.parametrize(("section", "field"), [("meta", "occurred_at"), ("payload", "expires_at")])
def test_naive_datetimes_are_not_read(section: str, field: str) -> None:
    data = to_data(authorized())
    data[section][field] = "2024-05-01T12:00:00"
    with pytest.raises(ValueError, match="naive"):
        from_recorded(record(authorized(), data))


def test_a_spend_event_survives_an_exact_json_text_round_trip() -> None:
    event = PaymentSpent(
        stream_id="pay-1",
        version=2,
        occurred_at=T0,
        correlation_id="net-1",
        causation_id="cmd-2",
        account="0xsafe",
        amount=Money(2**256 - 1, EURE),
        evidence=ChainEvidence(
            chain_id=100, block_number=1, block_hash="0x01", tx_hash="0x02", log_index=0
        ),
    )
    text = json.dumps(to_data(event), sort_keys=True)
    assert json.loads(text) == to_data(event)
    assert from_recorded(record(event)) == event


def test_commands_round_trip_through_to_json_and_from_json() -> None:
    """What the listener keeps for a refund transfer that matches nothing yet."""
    import json as _json

    from domain.commands import RecordSettlementTransfer
    from domain.events import ChainEvidence
    from domain.money import Currency, Money
    from domain.serialization import from_json, to_json

    command = RecordSettlementTransfer(
        command_id="chain:100:0xab:3", at=datetime(2024, 9, 20, 12, tzinfo=UTC),
        recipient="0x" + "49" * 20, token="0x" + "42" * 20,
        amount=Money(2_350000000000000000, Currency("EURe", 18)),
        evidence=ChainEvidence(chain_id=100, block_number=36_097_045, block_hash="0x" + "cc" * 32,
                               tx_hash="0x" + "5f" * 32, log_index=3),
    )
    raw = _json.loads(_json.dumps(to_json(command)))
    assert from_json(RecordSettlementTransfer, raw) == command


# -- schema versions and upcasting ------------------------------------------------------------------
def _pre_versioning(event: DomainEvent) -> RecordedEvent:
    """How releases before schema versions stored an event: no `meta.schema`."""
    data = to_data(event)
    del data["meta"]["schema"]
    return RecordedEvent(stream_id=event.stream_id, version=event.version, position=1,
                         type=type(event).__name__, data=data, recorded_at=T0)


def test_an_event_stored_before_schema_versions_reads_as_today() -> None:
    event = authorized(amount=Money(10**30 + 1, EURE))
    old = _pre_versioning(event)
    assert schema_of(old.data) == 0
    assert from_recorded(old) == event
    assert upcast(old.type, old.data)["meta"]["schema"] == SCHEMA_VERSION


def test_upcasters_run_in_order_up_to_the_current_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """A future shape change: v2 renames PaymentAuthorized.mcc to merchant_category, and this
    model (reading v2) gets its v1 data through the chain 0 -> 1 -> 2; a v3 row is refused."""
    import domain.serialization as ser

    def rename(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        payload = dict(data["payload"])
        if event_type == "PaymentAuthorized":
            payload["merchant_category"] = payload.pop("mcc")
        return {"payload": payload, "meta": {**data["meta"], "schema": 2}}

    monkeypatch.setattr(ser, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(ser.UPCASTERS, 1, rename)
    old = _pre_versioning(authorized())
    data = ser.upcast(old.type, old.data)
    assert data["meta"]["schema"] == 2
    assert "mcc" not in data["payload"] and data["payload"]["merchant_category"] == "5462"
    with pytest.raises(UnknownEventType, match="schema 3"):
        ser.upcast(old.type, {**old.data, "meta": {**old.data["meta"], "schema": 3}})


# -- the card network's events ----------------------------------------------------------------------
def test_network_events_are_new_types_so_stored_events_keep_schema_1() -> None:
    """The network side added event types and changed none: nothing stored needs an upcaster,
    and our approval is still written exactly as before."""
    assert SCHEMA_VERSION == 1
    assert set(to_data(authorized())["payload"]) == {
        "account", "amount", "merchant", "mcc", "expires_at"}


def test_a_clearing_is_stored_with_exact_amounts_and_its_flags() -> None:
    from domain.events import ClearingRecorded

    def eure(units: int) -> Money:
        return Money(units, EURE)

    event = ClearingRecorded(
        stream_id="auth-9", version=3, occurred_at=T0, correlation_id="clr-1",
        causation_id="auth-msg-1", clearing_id="clr-1", amount=eure(12 * 10**18 + 1),
        final=True, basis="hold", from_hold=eure(10 * 10**18), beyond_hold=eure(2 * 10**18 + 1),
        released=eure(0), held=eure(0),
    )
    data = to_data(event)
    assert data["payload"]["final"] is True
    assert data["payload"]["beyond_hold"] == {
        "units": "2000000000000000001", "currency": "EURe", "decimals": 18}
    assert from_recorded(record(event)) == event


def test_a_spend_retraction_recorded_before_it_kept_its_amount_reads_as_none() -> None:
    from domain.events import SpendRetracted
    from domain.serialization import event_metadata

    stored = {"payload": {"evidence": {"chain_id": 100, "block_number": 7,
                                       "block_hash": "0x" + "b7" * 32,
                                       "tx_hash": "0x" + "77" * 32, "log_index": 3},
                          "reason": "reorg"},
              "meta": event_metadata(SpendRetracted(
                  stream_id="p", version=3, occurred_at=datetime(2026, 12, 1, tzinfo=UTC),
                  correlation_id="p", causation_id="c", evidence=ChainEvidence(
                      chain_id=100, block_number=7, block_hash="0x" + "b7" * 32,
                      tx_hash="0x" + "77" * 32, log_index=3), reason="reorg"))}
    event = from_recorded(RecordedEvent("p", 3, 9, "SpendRetracted", stored,
                                        datetime(2026, 12, 1, tzinfo=UTC)))
    assert isinstance(event, SpendRetracted) and event.amount is None

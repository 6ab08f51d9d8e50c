"""Events to JSON-able dicts and back, driven by each dataclass's type hints.

Money becomes {"units": "<int as string>", "currency": code, "decimals": n}: amounts stay exact in JSON
(18-decimal token amounts overflow a double). Datetimes are ISO 8601 with their UTC offset.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any

from domain.errors import UnknownEventType
from domain.events import PAYMENT_EVENTS, DomainEvent, RecordedEvent
from domain.money import Currency, Money

_ENVELOPE = frozenset(f.name for f in dataclasses.fields(DomainEvent))
EVENT_TYPES: dict[str, type[DomainEvent]] = {cls.__name__: cls for cls in PAYMENT_EVENTS}


_HINTS: dict[type, dict[str, Any]] = {}
T = typing.TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _dump(value: Any) -> Any:
    if isinstance(value, Money):
        return {
            "units": str(value.units),
            "currency": value.currency.code,
            "decimals": value.currency.decimals,
        }
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in an event; use UTC-aware times")
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _load(hint: Any, raw: Any) -> Any:
    if hint is Money:
        return Money(int(raw["units"]), Currency(raw["currency"], int(raw["decimals"])))
    if hint is datetime:
        value = datetime.fromisoformat(raw)
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {raw!r} in an event; use UTC-aware times")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint(**{k: _load(h, raw[k]) for k, h in _hints(hint).items()})
    return raw


def to_json(value: Any) -> dict[str, Any]:
    """Any of the model's dataclasses (an event's parts, a command) as JSON-able values."""
    dumped = _dump(value)
    if not isinstance(dumped, dict):
        raise TypeError(f"{type(value).__name__} is not one of the model's dataclasses")
    return dumped


def from_json(cls: type[T], raw: dict[str, Any]) -> T:
    """The inverse of `to_json` for the dataclass `cls`."""
    value: T = _load(cls, raw)
    return value


def event_payload(event: DomainEvent) -> dict[str, Any]:
    """The event's own fields (not the envelope: stream, version, ids, time) as JSON-able values."""
    return {
        f.name: _dump(getattr(event, f.name))
        for f in dataclasses.fields(event)
        if f.name not in _ENVELOPE
    }


def event_metadata(event: DomainEvent) -> dict[str, Any]:
    return {
        "occurred_at": _dump(event.occurred_at),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
    }


def to_data(event: DomainEvent) -> dict[str, Any]:
    """Payload plus metadata in one dict: what is stored and published for an event."""
    return {"payload": event_payload(event), "meta": event_metadata(event)}


def from_recorded(recorded: RecordedEvent) -> DomainEvent:
    """Rebuild the typed event; an unknown type raises `UnknownEventType` (callers quarantine it)."""
    cls = EVENT_TYPES.get(recorded.type)
    if cls is None:
        raise UnknownEventType(f"unknown event type {recorded.type!r}")
    hints = _hints(cls)
    payload = recorded.data["payload"]
    meta = recorded.data["meta"]
    fields = {name: _load(hints[name], payload[name]) for name in payload}
    return cls(
        stream_id=recorded.stream_id,
        version=recorded.version,
        occurred_at=_load(datetime, meta["occurred_at"]),
        correlation_id=meta["correlation_id"],
        causation_id=meta["causation_id"],
        **fields,
    )

"""Events to JSON-able dicts and back, driven by each dataclass's type hints.

Money becomes {"units": "<int as string>", "currency": code, "decimals": n}: amounts stay exact in JSON
(18-decimal token amounts overflow a double). Datetimes are ISO 8601 with their UTC offset.

Stored events carry a schema version (`meta.schema`). Reading an older one runs it through the
upcasters, one version step at a time, before it becomes a typed event; so a change to an event's
shape is an upcaster here, never a rewrite of stored rows or a second reader elsewhere. Events
stored before versioning have no `meta.schema` and count as version 0.

A new event type (the card network's, in `events.NETWORK_EVENTS`) is not a shape change: it is
registered by name in `EVENT_TYPES` and written at the current version, and no stored row changes
meaning, so the version stays. Booleans and strings pass through as JSON values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import datetime
from typing import Any

from domain.errors import UnknownEventType
from domain.events import PAYMENT_EVENTS, DomainEvent, RecordedEvent
from domain.money import Currency, Money

SCHEMA_VERSION = 1
"""The shape `to_data` writes. Raise it with an upcaster from the previous version."""

Upcaster = typing.Callable[[str, dict[str, Any]], dict[str, Any]]
"""(event type, data at version n) -> data at version n + 1."""


def _stamp_schema(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """0 -> 1: the version appears in the metadata; payloads are unchanged."""
    return {**data, "meta": {**data["meta"], "schema": 1}}


UPCASTERS: dict[int, Upcaster] = {0: _stamp_schema}
"""From-version -> upcaster to the next version."""


def schema_of(data: dict[str, Any]) -> int:
    return int(data.get("meta", {}).get("schema", 0))


def upcast(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Bring stored event data to `SCHEMA_VERSION`; newer data than this code knows is refused."""
    version = schema_of(data)
    if version > SCHEMA_VERSION:
        raise UnknownEventType(f"{event_type} has schema {version}; this version of cardpay reads "
                               f"up to {SCHEMA_VERSION}")
    while version < SCHEMA_VERSION:
        data = UPCASTERS[version](event_type, data)
        version += 1
        if schema_of(data) != version:
            raise AssertionError(f"upcaster from {version - 1} did not produce schema {version}")
    return data


_ENVELOPE = frozenset(f.name for f in dataclasses.fields(DomainEvent))
EVENT_TYPES: dict[str, type[DomainEvent]] = {cls.__name__: cls for cls in PAYMENT_EVENTS}


_HINTS: dict[type, dict[str, Any]] = {}
T = typing.TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}
"""The field names of each dataclass dumped (None: not a dataclass), looked up once per class:
`dataclasses.fields` per value was a tenth of a backfill's event-store time (issue 11)."""


def _field_names(value: Any) -> tuple[str, ...] | None:
    cls = type(value)
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        names = (tuple(f.name for f in dataclasses.fields(value))
                 if dataclasses.is_dataclass(value) and not isinstance(value, type) else None)
        _FIELD_NAMES[cls] = names
        return names


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
    names = _field_names(value)
    if names is not None:
        return {name: _dump(getattr(value, name)) for name in names}
    return value


Loader = typing.Callable[[Any], Any]
_LOADERS: dict[Any, Loader] = {}


def _load(hint: Any, raw: Any) -> Any:
    return _loader(hint)(raw)


def _loader(hint: Any) -> Loader:
    """The reader of one type hint's JSON, made once per hint (the projector and the sagas
    decode every stored event: the hints are looked at once, not per event)."""
    found = _LOADERS.get(hint)
    if found is None:
        found = _LOADERS[hint] = _compile(hint)
    return found


def _compile(hint: Any) -> Loader:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        load_inner = _loader(inner)
        return lambda raw: None if raw is None else load_inner(raw)
    if hint is Money:
        return _money
    if hint is datetime:
        return _datetime
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        cls = hint
        parts = [(name, _loader(h)) for name, h in _hints(cls).items()]
        return lambda raw: cls(**{name: load(raw[name]) for name, load in parts})
    return _as_is


def _money(raw: Any) -> Money:
    return Money(int(raw["units"]), _currency(raw["currency"], int(raw["decimals"])))


_CURRENCIES: dict[tuple[str, int], Currency] = {}


def _currency(code: str, decimals: int) -> Currency:
    """One `Currency` per (code, decimals) read (it is immutable): checked once, not per amount."""
    found = _CURRENCIES.get((code, decimals))
    if found is None:
        found = Currency(code, decimals)
        if len(_CURRENCIES) < 1024:  # a handful in practice; bounded whatever the input
            _CURRENCIES[(code, decimals)] = found
    return found


def _datetime(raw: Any) -> datetime:
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {raw!r} in an event; use UTC-aware times")
    return value


def _as_is(raw: Any) -> Any:
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
        "schema": SCHEMA_VERSION,
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
    data = upcast(recorded.type, recorded.data)
    payload = data["payload"]
    meta = data["meta"]
    fields = {name: _loader(hints[name])(payload[name]) for name in payload}
    return cls(
        stream_id=recorded.stream_id,
        version=recorded.version,
        occurred_at=_datetime(meta["occurred_at"]),
        correlation_id=meta["correlation_id"],
        causation_id=meta["causation_id"],
        **fields,
    )

"""A saga instance as JSON and back (what the saga store keeps): exact, and refused loudly when
it does not fit (a stored instance that cannot be read is a bug, never a silent reset)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sagas.engine.model import Effect, SagaInstance, Status, Waiting


def effect_to_json(effect: Effect) -> dict[str, Any]:
    return {"request_id": effect.request_id, "name": effect.name, "payload": dict(effect.payload)}


def effect_from_json(data: dict[str, Any]) -> Effect:
    return Effect(data["request_id"], data["name"], data["payload"])


def to_json(instance: SagaInstance) -> dict[str, Any]:
    """Everything but the id, kind and version (the store's columns)."""
    waiting = instance.waiting
    return {
        "status": instance.status.value, "stage": instance.stage, "data": dict(instance.data),
        "compensations": [effect_to_json(e) for e in instance.compensations],
        "waiting": None if waiting is None else {
            "effect": effect_to_json(waiting.effect), "attempt": waiting.attempt,
            "compensating": waiting.compensating, "retry_set": waiting.retry_set,
            "timeout_s": None if waiting.timeout is None else waiting.timeout.total_seconds()},
        "steps": instance.steps, "problem": instance.problem, "resume": instance.resume,
        "seen": dict(instance.seen),
    }


def from_json(saga_id: str, kind: str, version: int, data: dict[str, Any]) -> SagaInstance:
    w = data["waiting"]
    waiting = None if w is None else Waiting(
        effect_from_json(w["effect"]), int(w["attempt"]), bool(w["compensating"]),
        None if w["timeout_s"] is None else timedelta(seconds=w["timeout_s"]),
        bool(w["retry_set"]))
    return SagaInstance(
        saga_id=saga_id, kind=kind, version=version, status=Status(data["status"]),
        stage=data["stage"], data=data["data"],
        compensations=tuple(effect_from_json(e) for e in data["compensations"]),
        waiting=waiting, steps=int(data["steps"]), problem=data["problem"],
        resume=bool(data.get("resume", False)),  # absent in instances stored before it
        seen={str(k): int(v) for k, v in data.get("seen", {}).items()})

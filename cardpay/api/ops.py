"""Ops routes: the exceptions queue (`GET /v1/exceptions`, scope ops:read), resolving one with a
note (`POST /v1/exceptions/{id}/resolve`) and resuming the stuck saga behind one
(`POST /v1/exceptions/{id}/retry`), both scope ops:write, on
`cardpay.handlers.exceptions` as `cardpay exceptions list|resolve` use it.

The resolve body is read raw after the token is checked (not as a FastAPI body parameter, which
is parsed before any dependency runs): a caller without a token learns nothing from a 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from cardpay.api import models as m
from cardpay.api.auth import GUARDED, require
from cardpay.handlers.api_tokens import OPS_READ, OPS_WRITE
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.ports import QuarantinedRow

MAX_ID = 2**63 - 1
"""Ids are BIGINT: a larger one is refused 422, not sent to PostgreSQL."""


class ExceptionItem(BaseModel):
    """One exception, as `cardpay exceptions list` shows it (`show` adds the payload)."""

    id: int
    source: str = Field(description="`network` or `saga:<kind>`")
    key: str
    reason: str
    attempts: int = Field(description="retries so far")
    created_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None

    @classmethod
    def of(cls, row: QuarantinedRow) -> ExceptionItem:
        return cls(id=row.id, source=row.source, key=row.key, reason=row.reason,
                   attempts=row.attempts, created_at=row.created_at,
                   resolved_at=row.resolved_at, resolution=row.resolution)


class ExceptionList(BaseModel):
    exceptions: list[ExceptionItem]


class ResolveBody(BaseModel):
    """What was done about the exception, outside cardpay; kept as its resolution."""

    model_config = {"extra": "forbid",
                    "json_schema_extra": {"examples": [{"note": "refunded by bank transfer"}]}}
    note: str = Field(min_length=1, max_length=2000, pattern=r"\S")


class Resolved(BaseModel):
    id: int
    outcome: str = Field(description="resolved, or retried")
    message: str


INVALID: dict[str, Any] = {
    "description": "a body without a note (an `ErrorResponse`), or an id that is not a "
    "number in range (FastAPI's `HTTPValidationError`)",
    "content": {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/ErrorResponse"},
        {"$ref": "#/components/schemas/HTTPValidationError"}]}}}}


def _refusal(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


def exceptions_router(queue: ExceptionsQueue) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/v1/exceptions", response_model=ExceptionList, responses=GUARDED,
                summary="Exceptions: what needs a person (open ones, oldest first)")
    async def list_exceptions(
            _: Annotated[frozenset[str], Depends(require(OPS_READ))],
            include_resolved: Annotated[bool, Query(alias="all", description=(
                "also the resolved ones"))] = False,
            limit: Annotated[int | None, Query(ge=1, le=10_000, description=(
                "at most this many"))] = None) -> ExceptionList:
        rows = await run_in_threadpool(queue.list, include_resolved=include_resolved,
                                       limit=limit)
        return ExceptionList(exceptions=[ExceptionItem.of(r) for r in rows])

    resolve_body: dict[str, Any] = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ResolveBody.model_json_schema()}}}}

    @router.post("/v1/exceptions/{item_id}/resolve", response_model=Resolved,
                 summary="Resolve an exception with a note saying what was done",
                 openapi_extra=resolve_body, responses={
                     **GUARDED,
                     404: {"model": m.ErrorResponse, "description": "no such exception"},
                     409: {"model": m.ErrorResponse, "description": "already resolved"},
                     413: {"model": m.ErrorResponse, "description": "the body is too large"},
                     422: INVALID})
    async def resolve_exception(
            _: Annotated[frozenset[str], Depends(require(OPS_WRITE))],
            item_id: Annotated[int, Path(ge=1, le=MAX_ID)],
            request: Request) -> JSONResponse:
        from cardpay.api.app import MAX_BODY_BYTES, read_body  # app.py includes this router

        body = await read_body(request)
        if body is None:
            return _refusal(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            note = ResolveBody.model_validate_json(body).note
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            return _refusal(422, "invalid", f"{where}: {first['msg']} (send "
                            '{"note": "what was done"})')
        outcome = await run_in_threadpool(queue.resolve, item_id, note)
        if outcome.outcome == "not_found":
            return _refusal(404, "not_found", f"no exception {item_id}")
        if outcome.outcome == "already_resolved":
            return _refusal(409, "already_resolved", f"exception {item_id} is {outcome.message}")
        return JSONResponse(Resolved(id=item_id, outcome=outcome.outcome,
                                     message=outcome.message).model_dump())

    @router.post("/v1/exceptions/{item_id}/retry", response_model=Resolved,
                 summary="Resume the stuck saga behind an exception (as `cardpay exceptions "
                 "retry` does)", responses={
                     **GUARDED,
                     404: {"model": m.ErrorResponse, "description": "no such exception"},
                     409: {"model": m.ErrorResponse, "description": "already resolved, or "
                           "nothing cardpay can redo (resolve it with a note instead)"},
                     422: INVALID})
    async def retry_exception(
            _: Annotated[frozenset[str], Depends(require(OPS_WRITE))],
            item_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> JSONResponse:
        outcome = await run_in_threadpool(queue.retry, item_id)
        if outcome.outcome == "not_found":
            return _refusal(404, "not_found", f"no exception {item_id}")
        if outcome.outcome in ("already_resolved", "not_retryable"):
            return _refusal(409, outcome.outcome, f"exception {item_id}: {outcome.message}")
        return JSONResponse(Resolved(id=item_id, outcome=outcome.outcome,
                                     message=outcome.message).model_dump())

    return router

"""The HTTP API (ASGI, FastAPI): card-network ingress, the ops routes, health, readiness and
metrics.

`create_app` takes everything it uses as arguments (no globals, nothing at import time); the
composition root `cardpay.bootstrap.api` builds them from the settings.

A network request goes: raw body (over 256 KiB: 413, not read further) → signature (401 with the
reason if it is not the network's; nothing stored, so an attacker without the secret cannot fill
any table) → parse (a signed body that is not JSON, not the schema or an unknown type: 400/422 and
a quarantine row with the raw body) → the service layer (`NetworkIngress`: dedup by webhook id,
the effect and the delivery record in one transaction). The body is read raw, not through
FastAPI's body parameters, because the signature covers the exact bytes and must be checked before
anything is parsed; the request schemas are added to the OpenAPI document by hand for that reason.

The finance and ops routes need a bearer token with a scope (`cardpay.api.auth.require`); the
network's routes are signed instead, and /healthz, /readyz and /metrics are open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from cardpay.api import auth, ops
from cardpay.api import finance as finance_routes
from cardpay.api import models as m
from cardpay.api.signatures import SignatureRejected, SignatureVerifier
from cardpay.handlers.api_tokens import TokenStore
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.finance import FinanceReads
from cardpay.handlers.network import NetworkIngress, Received, Reply
from cardpay.metrics.api import ApiMetrics
from domain.errors import DomainError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
"""Larger bodies are refused 413 before they are read whole, and nothing is stored (no network
message comes near this size)."""
KEPT_HEADERS = ("webhook-id", "webhook-timestamp")
"""The headers kept with a quarantined body (not the signature: it proves nothing later)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
D = TypeVar("D")


class Refusal(Exception):
    """A signed body that cannot be used: the status, the metric's reason code and one line."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, one_line(reason)


def one_line(text: str, limit: int = 300) -> str:
    """Printable, valid UTF-8, one line, bounded: it goes into a JSON answer, a log line and a
    PostgreSQL text column (which holds no NUL); it may quote what the sender sent."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse(adapter: TypeAdapter[Any], body: bytes, convert: Callable[[Any], D]) -> D:
    """The domain message of a body, or `Refusal` saying in one line why not."""
    try:
        model = adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        kind = first["type"]
        if kind == "json_invalid":
            raise Refusal(400, "not_json", f"body is not JSON ({first['msg']})") from None
        if kind == "union_tag_invalid":
            tag = str(first.get("ctx", {}).get("tag", ""))[:64]
            raise Refusal(422, "unknown_type", f"unknown message type {tag!r}") from None
        if kind == "union_tag_not_found":
            raise Refusal(422, "schema", "the message has no `type`") from None
        where = ".".join(str(part) for part in first["loc"]) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Refusal(422, "schema", f"{where}: {first['msg']}{more}") from None
    try:
        return convert(model)
    except DomainError as exc:
        raise Refusal(422, "invalid", str(exc)) from None


async def read_body(request: Request) -> bytes | None:
    """The raw body, or None as soon as it is known to be over `MAX_BODY_BYTES` (from its
    Content-Length, or while reading it): a large upload is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


Readiness = Callable[[], bool | Sequence[str]]
"""/readyz's check: the reasons the system is not ready (empty: ready), or a plain bool
(False: the database does not answer)."""


def not_ready_reasons(answer: bool | Sequence[str]) -> list[str]:
    if isinstance(answer, bool):
        return [] if answer else ["the database does not answer"]
    return [one_line(reason) for reason in answer]


def create_app(ingress: NetworkIngress, verifier: SignatureVerifier, metrics: ApiMetrics,
               ready: Readiness, *, tokens: TokenStore, exceptions: ExceptionsQueue,
               finance: FinanceReads | None = None, finance_page: APIRouter | None = None,
               max_in_flight: int = 48) -> FastAPI:
    """The API on its dependencies: `ready()` says why the system is not ready (for /readyz,
    503 with the reasons; it is called in a worker thread); `tokens` admit callers of the
    finance and ops routes;
    `exceptions` is the queue those routes list and resolve; `finance` what the finance routes
    read (without it they are not served); `finance_page` (`cardpay.api.finance_page`), when
    given, is served under /finance. At most `max_in_flight` network
    requests are worked on at once; one more is answered 503 (`overloaded`) before its body is
    read: under overload the requests admitted are still answered within the network's
    deadline, instead of a queue in which every answer comes too late."""
    app = FastAPI(title="cardpay", version="1",
                  description="Card-network ingress (signed with Standard Webhooks), the "
                  "finance and ops routes (bearer tokens with scopes, from `cardpay tokens "
                  "create`), health "
                  "and metrics of cardpay.")
    auth.install(app, tokens, metrics)
    app.include_router(ops.exceptions_router(exceptions))
    if finance is not None:
        app.include_router(finance_routes.finance_router(finance))

    in_flight = 0

    async def network(request: Request, adapter: TypeAdapter[Any],
                      convert: Callable[[Any], D],
                      handle: Callable[[Received, D], Reply]) -> JSONResponse:
        nonlocal in_flight
        if in_flight >= max_in_flight:
            metrics.network_unavailable.labels("overloaded").inc()
            return JSONResponse({"error": "overloaded", "reason": f"{in_flight} requests in "
                                 "progress; nothing recorded, retry"}, status_code=503)
        in_flight += 1  # the event loop is one thread: no lock needed
        try:
            return await admitted(request, adapter, convert, handle)
        finally:
            in_flight -= 1

    async def admitted(request: Request, adapter: TypeAdapter[Any],
                       convert: Callable[[Any], D],
                       handle: Callable[[Received, D], Reply]) -> JSONResponse:
        received_at = datetime.now(UTC)
        body = await read_body(request)
        if body is None:
            metrics.webhook_rejections.labels("too_large").inc()
            return JSONResponse({"error": "too_large", "reason": f"the body is over "
                                 f"{MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            webhook_id = verifier.verify(body, request.headers)
        except SignatureRejected as exc:
            metrics.webhook_rejections.labels(exc.reason).inc()
            return JSONResponse({"error": "unauthorized", "reason": exc.reason,
                                 "detail": exc.detail}, status_code=401)
        received = Received(webhook_id, body,
                            {h: request.headers[h] for h in KEPT_HEADERS}, received_at)
        try:
            message = parse(adapter, body, convert)
        except Refusal as refusal:
            reply = await run_in_threadpool(ingress.reject, received, refusal.status,
                                             refusal.reason)
            if not reply.replayed:
                metrics.network_rejected.labels(refusal.code).inc()
        else:
            try:
                reply = await run_in_threadpool(handle, received, message)
            except OperationalError as exc:
                # the database went away, or chose this transaction as a deadlock's victim:
                # nothing was recorded, the network retries
                log.warning("delivery %s not processed: %s", webhook_id,
                            str(exc.orig or exc).splitlines()[0])
                metrics.network_unavailable.labels("database").inc()
                return JSONResponse({"error": "unavailable", "reason": "the database did not "
                                     "complete the transaction; retry"}, status_code=503)
            if reply.status == 503:
                metrics.network_unavailable.labels(str(reply.body.get("error"))).inc()
        return JSONResponse(dict(reply.body), status_code=reply.status)

    @app.post("/v1/network/authorizations", response_model=m.DecisionResponse,
              summary="Authorization request: approve (possibly partially) or decline",
              responses=_responses(), openapi_extra=_body("AuthorizationRequestBody"))
    async def authorizations(request: Request) -> JSONResponse:
        return await network(request, m.AUTHORIZATION,
                             lambda body: body.to_domain(), ingress.authorize)

    @app.post("/v1/network/events", response_model=m.EventAccepted,
              summary="Asynchronous network message (discriminated by `type`)",
              responses=_responses(), openapi_extra=_body("NetworkEventBody", events=True))
    async def events(request: Request) -> JSONResponse:
        return await network(request, m.EVENTS, lambda body: body.to_domain(), ingress.handle)

    @app.get("/healthz", summary="The process is up (it answers; nothing else is checked)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The database answers and the feeds are within their lag bound",
             responses={503: {"model": m.ErrorResponse}})
    async def readyz() -> JSONResponse:
        try:
            reasons = not_ready_reasons(await run_in_threadpool(ready))
        except Exception as exc:  # readiness reports, it does not fail
            log.warning("readiness check failed: %s", exc)
            reasons = ["the readiness check failed"]
        if not reasons:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"error": "not_ready", "reason": "; ".join(reasons)},
                            status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if finance_page is not None:
        app.include_router(finance_page)
    _document_bodies(app)
    app.add_middleware(RequestTimer, metrics=metrics)
    return app


def _responses() -> dict[int | str, dict[str, Any]]:
    return {status: {"model": m.ErrorResponse, "description": what} for status, what in (
        (400, "the body is not JSON (quarantined)"),
        (401, "unsigned, malformed, stale, future-dated or badly signed (nothing stored)"),
        (409, "this webhook id was delivered before with another body"),
        (413, "the body is too large (nothing stored)"),
        (422, "the body does not match the schema or is an unknown type (quarantined)"),
        (503, "nothing recorded, retry: `not_yet_known` (it refers to an authorization or "
              "return that has not arrived yet), `overloaded`, `past_deadline`, `unavailable`"),
    )}


def _body(schema: str, *, events: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    if events:
        content["examples"] = {model.__name__.removesuffix("Body"): {
            "summary": model.__doc__.splitlines()[0] if model.__doc__ else model.__name__,
            "value": examples(model)[0]} for model in m.EVENT_MODELS}
    else:
        content["examples"] = {"authorization": {"value": examples(
            m.AuthorizationRequestBody)[0]}}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def examples(model: type[BaseModel]) -> list[dict[str, Any]]:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    examples = extra["examples"]
    assert isinstance(examples, list)
    return [dict(example) for example in examples if isinstance(example, dict)]


def _document_bodies(app: FastAPI) -> None:
    """Add the request schemas (read raw by the routes) to the OpenAPI components."""
    ref = "#/components/schemas/{model}"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, adapter in (("NetworkEventBody", m.EVENTS),
                                  ("AuthorizationRequestBody", m.AUTHORIZATION)):
                body = adapter.json_schema(ref_template=ref)
                components.update(body.pop("$defs", {}))
                components.setdefault(name, body)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


class RequestTimer:
    """ASGI middleware: `cardpay_api_request_seconds{route,status}` per request, labelled with
    the matched route's template (a raw path would make the label set unbounded)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self._app = app
        self._histogram = metrics.request_seconds

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self._histogram.labels(route, str(status)).observe(time.perf_counter() - started)

"""Bearer tokens on the finance and ops routes: `require(scope)`, a FastAPI dependency.

    @router.get("/v1/exceptions", responses=GUARDED)
    async def listing(_: Annotated[frozenset[str], Depends(require(OPS_READ))]) -> ...

It reads `Authorization: Bearer <token>` and asks the app's token store (put on `app.state` by
`install`, which `create_app` calls with the store it is given: no module global). No header, a
header that is not `Bearer`, a malformed, unknown or revoked token: 401 with
`WWW-Authenticate: Bearer` (RFC 6750's challenge, `error="invalid_token"` once a token was sent)
and one JSON line `{"error": "unauthorized", "reason": ...}`. A live token without the scope:
403, `error="insufficient_scope"`. The card network's routes carry Standard Webhooks
signatures instead, and /healthz, /readyz and /metrics stay open (for probes and Prometheus).
Every refusal is counted in `cardpay_api_token_rejections_total{reason}` (a guessing client
shows there).

The dependency declares `HTTPBearer` as a security scheme with the route's scope, so the OpenAPI
document lists the `bearer` scheme and each guarded operation's `security` (OpenAPI 3.1 allows
role names in a requirement of a non-OAuth scheme).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from cardpay.api import models as m
from cardpay.handlers.api_tokens import TokenStore, check_scopes, token_id_of
from cardpay.metrics.api import ApiMetrics

log = logging.getLogger(__name__)

BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", bearerFormat="cp_<id>_<secret>",
    description="A token from `cardpay tokens create --scope SCOPE`, sent as "
    "`Authorization: Bearer <token>`. Scopes: finance:read, ops:read, ops:write.")
REALM = 'Bearer realm="cardpay"'

GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorResponse, "description": "no token, or a malformed, unknown or "
          "revoked one (`WWW-Authenticate: Bearer`)"},
    403: {"model": m.ErrorResponse, "description": "the token lacks this route's scope"},
    503: {"model": m.ErrorResponse, "description": "the database did not answer; retry"},
}
"""The answers every guarded route adds to its OpenAPI document."""


class BearerRejected(Exception):
    """A request the guard refuses: status, the JSON `error` code, one line, the challenge and
    the metric's reason code."""

    def __init__(self, status: int, error: str, reason: str, challenge: str | None,
                 code: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.challenge = status, error, reason, challenge
        self.code = code


def install(app: FastAPI, tokens: TokenStore, metrics: ApiMetrics) -> None:
    """Give `app` its token store and the handler that turns a refusal into its answer."""
    app.state.tokens = tokens

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BearerRejected)
        metrics.token_rejections.labels(exc.code).inc()
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        return JSONResponse({"error": exc.error, "reason": exc.reason},
                            status_code=exc.status, headers=headers)

    app.add_exception_handler(BearerRejected, refused)


def _unauthorized(code: str, reason: str, *, token_sent: bool) -> BearerRejected:
    challenge = f'{REALM}, error="invalid_token"' if token_sent else REALM
    return BearerRejected(401, "unauthorized", reason, challenge, code)


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization` header, or the 401 saying what is wrong with it."""
    if header is None:
        raise _unauthorized("missing", "no Authorization header: send `Authorization: Bearer "
                            "<token>` (`cardpay tokens create` makes one)", token_sent=False)
    kind, _, token = header.strip().partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        raise _unauthorized("not_bearer", "the Authorization header is not `Bearer <token>`",
                            token_sent=False)
    if token_id_of(token) is None:
        raise _unauthorized("malformed", "the token is malformed (cardpay's read "
                            "cp_<id>_<secret>)", token_sent=True)
    return token


def require(scope: str) -> Callable[..., Awaitable[frozenset[str]]]:
    """A dependency admitting requests whose bearer token is live and grants `scope`; it
    returns the token's scopes. An unknown `scope` is refused here, when the route is built."""
    check_scopes([scope])

    async def guard(request: Request,
                    _: HTTPAuthorizationCredentials | None = Security(  # noqa: B008  # FastAPI's way
                        BEARER, scopes=[scope])) -> frozenset[str]:
        token = bearer_token(request.headers.get("authorization"))
        tokens: TokenStore = request.app.state.tokens
        try:
            granted = await run_in_threadpool(tokens.verify, token)
        except OperationalError as exc:
            log.warning("token not checked: %s", str(exc.orig or exc).splitlines()[0])
            raise BearerRejected(503, "unavailable", "the database did not answer; retry",
                                 None, "unavailable") from None
        if granted is None:
            raise _unauthorized("unknown_or_revoked", "unknown or revoked token",
                                token_sent=True)
        if scope not in granted:
            raise BearerRejected(403, "forbidden", f"this token lacks the scope {scope} "
                                 f"(it has {', '.join(sorted(granted))})",
                                 f'{REALM}, error="insufficient_scope", scope="{scope}"',
                                 "insufficient_scope")
        return granted

    return guard

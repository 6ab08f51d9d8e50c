"""A small JSON-RPC client over HTTP with retries for transient faults.

Retries (429, 5xx, timeouts, connection errors, malformed JSON) live here, in one layer around the
transport, with exponential backoff and jitter (tenacity); JSON-RPC error objects from the node are
not retried here (the caller knows whether e.g. "range too large" means shrink the range).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from listener.errors import RpcError, RpcTransportError

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RpcObserver(Protocol):
    """Told about every attempt: method, seconds, and the error class name (None on success)."""

    def rpc_attempt(self, method: str, seconds: float, error: str | None) -> None: ...


class HttpJsonRpc:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        observer: RpcObserver | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._session = requests.Session()
        self._ids = itertools.count(1)
        self._observer = observer
        self._sleep = sleep

    def call(self, method: str, params: list[Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential_jitter(multiplier=self._backoff, max=self._max_backoff,
                                         jitter=self._backoff),
            retry=retry_if_exception_type(RpcTransportError),
            sleep=self._sleep,
        )
        try:
            return retrying(self._attempt, method, params)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise RpcTransportError(
                f"{method}: gave up after {self._retries + 1} attempts: {last}") from last

    def _attempt(self, method: str, params: list[Any]) -> Any:
        started = time.monotonic()
        try:
            result = self._once(method, params)
        except RpcTransportError:
            self._observe(method, started, "transport")
            raise
        except RpcError:
            self._observe(method, started, "rpc_error")
            raise
        self._observe(method, started, None)
        return result

    def _observe(self, method: str, started: float, error: str | None) -> None:
        if self._observer is not None:
            self._observer.rpc_attempt(method, time.monotonic() - started, error)

    def _once(self, method: str, params: list[Any]) -> Any:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = self._session.post(self.url, json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise RpcTransportError(f"{method}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUS:
            raise RpcTransportError(f"{method}: HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise RpcTransportError(f"{method}: response is not JSON ({exc})") from exc
        if not isinstance(payload, dict) or ("result" not in payload and "error" not in payload):
            raise RpcTransportError(f"{method}: not a JSON-RPC response: {str(payload)[:120]}")
        if "error" in payload and payload["error"] is not None:
            error = payload["error"]
            code = error.get("code", 0) if isinstance(error, dict) else 0
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise RpcError(method, int(code), str(message))
        return payload["result"]

    def close(self) -> None:
        self._session.close()

"""A small JSON-RPC client over HTTP with retries for transient faults.

`call_many` sends many calls as JSON-RPC batches (at most `batch_size` per HTTP request; opt in
with `batch_size=BATCH_SIZE`, as the listener's composition root does, since not every provider or
proxy takes batches): against a remote node one round trip for a hundred block headers instead of
a hundred round trips. A batch that fails is sent again call by call through the usual retries.

Retries (429, 5xx, timeouts, connection errors, malformed JSON) live here, in one layer around the
transport, with exponential backoff and jitter (tenacity); JSON-RPC error objects from the node are
not retried here (the caller knows whether e.g. "range too large" means shrink the range).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
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
BATCH_SIZE = 100
"""Calls per JSON-RPC batch request (hosted nodes commonly accept 100 or more)."""
BATCH_GIVE_UP = 3
"""Failed batches in a row after which a client sends one call at a time."""


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
        batch_size: int = 1,
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
        self._batch_size = max(1, batch_size)
        self._batches = True
        self._batch_failures = 0

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential_jitter(multiplier=self._backoff, max=self._max_backoff,
                                         jitter=self._backoff),
            retry=retry_if_exception_type(RpcTransportError),
            sleep=self._sleep,
        )

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            return self._retrying()(self._attempt, method, params)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise RpcTransportError(
                f"{method}: gave up after {self._retries + 1} attempts: {last}") from last

    def call_many(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """The results of `calls` in order, sent as JSON-RPC batches of at most `batch_size`.
        RpcError (not retried) if the node answered any call with an error object.

        A batch is tried once; if it fails in transport (or the node answers it with one error
        object) its calls are sent one by one through `call`, each retried as usual. So a node or
        proxy that does not take batches costs one failed request per chunk, and after
        `BATCH_GIVE_UP` such failures in a row this client stops batching."""
        results: list[Any] = []
        for start in range(0, len(calls), self._batch_size):
            chunk = list(calls[start:start + self._batch_size])
            if len(chunk) > 1 and self._batches:
                try:
                    results += self._attempt_batch(_batch_name(chunk), chunk)
                    self._batch_failures = 0
                    continue
                except (RpcTransportError, _BatchRefused):
                    self._batch_failures += 1
                    self._batches = self._batch_failures < BATCH_GIVE_UP
            results += [self.call(method, params) for method, params in chunk]
        return results

    def _attempt_batch(self, name: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        result: list[Any] = self._observed(name, self._batch_once, name, calls)
        return result

    def _batch_once(self, name: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        ids = [next(self._ids) for _ in calls]
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                for i, (m, p) in zip(ids, calls, strict=True)]
        payload = self._post(name, body)
        if isinstance(payload, dict) and payload.get("error") is not None:
            raise _BatchRefused(name, 0, str(payload["error"])[:200])
        if not isinstance(payload, list):
            raise RpcTransportError(f"{name}: not a JSON-RPC batch response: {str(payload)[:120]}")
        by_id = {item.get("id"): item for item in payload if isinstance(item, dict)}
        out: list[Any] = []
        for i, (method, _) in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None or ("result" not in item and "error" not in item):
                raise RpcTransportError(f"{name}: no answer for {method} (id {i}) in the batch")
            if item.get("error") is not None:
                raise _rpc_error(method, item["error"])
            out.append(item["result"])
        return out

    def _attempt(self, method: str, params: list[Any]) -> Any:
        return self._observed(method, self._once, method, params)

    def _observed(self, name: str, attempt: Callable[..., Any], *args: Any) -> Any:
        """One attempt, told to the observer with its time and error class."""
        started = time.monotonic()
        try:
            result = attempt(*args)
        except RpcTransportError:
            self._observe(name, started, "transport")
            raise
        except RpcError:
            self._observe(name, started, "rpc_error")
            raise
        self._observe(name, started, None)
        return result

    def _observe(self, method: str, started: float, error: str | None) -> None:
        if self._observer is not None:
            self._observer.rpc_attempt(method, time.monotonic() - started, error)

    def _post(self, method: str, body: Any) -> Any:
        try:
            response = self._session.post(self.url, json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise RpcTransportError(f"{method}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUS:
            raise RpcTransportError(f"{method}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise RpcTransportError(f"{method}: response is not JSON ({exc})") from exc

    def _once(self, method: str, params: list[Any]) -> Any:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        payload = self._post(method, body)
        if not isinstance(payload, dict) or ("result" not in payload and "error" not in payload):
            raise RpcTransportError(f"{method}: not a JSON-RPC response: {str(payload)[:120]}")
        if "error" in payload and payload["error"] is not None:
            raise _rpc_error(method, payload["error"])
        return payload["result"]

    def close(self) -> None:
        self._session.close()


class _BatchRefused(RpcError):
    """The node answered a batch with one error object: it does not take batches."""


def _batch_name(calls: Sequence[tuple[str, list[Any]]]) -> str:
    """How a batch is named in errors and metrics: `batch:<method>` when every call has the
    same method, else `batch`."""
    methods = {method for method, _ in calls}
    return f"batch:{methods.pop()}" if len(methods) == 1 else "batch"


def _rpc_error(method: str, error: Any) -> RpcError:
    code = error.get("code", 0) if isinstance(error, dict) else 0
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return RpcError(method, int(code), str(message))

"""A loopback JSON-RPC proxy for benchmarks: counts calls per method and can add latency.

Both indexers of the backfill benchmark talk to the node through one of these, so the RPC calls
each one makes are counted the same way (a JSON-RPC batch counts each call in it by its method,
and once under ``batch``), and ``latency_ms`` can model a remote node: every HTTP request waits
that long before it is forwarded, as a round trip to a provider would. Requests are served on
threads, so concurrent requests wait concurrently (as they would on a real network).

This is benchmark code, not a fault injector: tests/support/faulty_proxy.py is the tests' one.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["RpcProxy", "rpc_proxy"]


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (Ponder cancels requests it no longer needs) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


class RpcProxy:
    """A running proxy: ``url`` to give a client, ``counts()`` of the calls seen so far."""

    def __init__(self, upstream: str, latency_ms: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = parts.path or "/"
        self.latency = latency_ms / 1000.0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="rpc-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def start(self) -> RpcProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _count(self, body: bytes) -> None:
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        calls = payload if isinstance(payload, list) else [payload]
        with self._lock:
            if isinstance(payload, list):
                self._counts["batch"] += 1
            for call in calls:
                method = call.get("method") if isinstance(call, dict) else None
                self._counts[str(method) if method else "(malformed)"] += 1

    def _count_hangup(self) -> None:
        with self._lock:
            self._counts["(client hung up)"] += 1

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        """One upstream round trip on this thread's keep-alive connection (reopened once if the
        node closed it)."""
        for attempt in (1, 2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
                self._local.conn = conn
            try:
                conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                proxy._count(body)
                if proxy.latency > 0:
                    time.sleep(proxy.latency)
                try:
                    status, data = proxy._forward(body)
                except (OSError, http.client.HTTPException):
                    status, data = 502, b"upstream unreachable"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    proxy._count_hangup()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@contextmanager
def rpc_proxy(upstream: str, latency_ms: float = 0.0) -> Iterator[RpcProxy]:
    """A started proxy in front of ``upstream``, stopped on exit."""
    proxy = RpcProxy(upstream, latency_ms).start()
    try:
        yield proxy
    finally:
        proxy.stop()

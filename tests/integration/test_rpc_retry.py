"""`HttpJsonRpc` against a scripted JSON-RPC server on 127.0.0.1: what is retried and what is not.

Rate limits and unavailable nodes are retried in the client, so one busy provider never fails a
range; a JSON-RPC error object is the node's answer and goes straight to the caller (which knows
whether e.g. "range too large" means shrink the range). Deterministic: the server answers from a
script, and the backoff is a millisecond.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from listener.errors import RpcError, RpcTransportError
from listener.rpc import HttpJsonRpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Answer = tuple[int, bytes]

# Infura's answer to a rate-limited request: HTTP 429 *and* a JSON-RPC error body.
INFURA_429 = (429, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,'
                   b'"message":"daily request count exceeded, request rate limited"}}')
PLAIN_429 = (429, b'{"error":"rate limited"}')
UNAVAILABLE = (503, b"upstream unavailable")


def _result(value: Any) -> Answer:
    return 200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": value}).encode()


class ScriptedServer:
    """Answers each POST with the next scripted (status, body) and records the requests."""

    def __init__(self, script: list[Answer]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(json.loads(body))
                status, payload = server.script.pop(0) if server.script else (500, b"script over")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


class Attempts:
    def __init__(self) -> None:
        self.errors: list[str | None] = []

    def rpc_attempt(self, method: str, seconds: float, error: str | None) -> None:
        self.errors.append(error)


@pytest.fixture
def attempts() -> Attempts:
    return Attempts()


@contextlib.contextmanager
def _serving(script: list[Answer], attempts: Attempts,
             retries: int = 5) -> Iterator[tuple[ScriptedServer, HttpJsonRpc]]:
    """The scripted server and a client of it with a millisecond backoff."""
    with ScriptedServer(script) as server:
        client = HttpJsonRpc(server.url, timeout=5.0, retries=retries, backoff=0.001,
                             max_backoff=0.002, observer=attempts)
        try:
            yield server, client
        finally:
            client.close()


@pytest.mark.parametrize("refusal", [INFURA_429, PLAIN_429, UNAVAILABLE],
                         ids=["429-jsonrpc-body", "429-plain-body", "503"])
def test_a_rate_limit_or_unavailable_node_is_retried_and_the_result_returned(
    refusal: Answer, attempts: Attempts
) -> None:
    with _serving([refusal, _result("0x2a")], attempts) as (server, client):
        assert client.call("eth_blockNumber", []) == "0x2a"
    assert [r["method"] for r in server.requests] == ["eth_blockNumber"] * 2
    assert attempts.errors == ["transport", None]
    assert server.script == []


def test_repeated_rate_limits_are_retried_until_the_node_answers(attempts: Attempts) -> None:
    with _serving([INFURA_429] * 4 + [_result([])], attempts) as (server, client):
        assert client.call("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x2"}]) == []
    assert len(server.requests) == 5
    assert attempts.errors == ["transport"] * 4 + [None]


def test_rate_limits_beyond_the_retries_give_up_as_a_transport_error(attempts: Attempts) -> None:
    with (_serving([INFURA_429] * 3, attempts, retries=2) as (server, client),
          pytest.raises(RpcTransportError, match="gave up after 3 attempts")):
        client.call("eth_blockNumber", [])
    assert len(server.requests) == 3


def test_a_json_rpc_error_object_is_raised_at_once_not_retried(attempts: Attempts) -> None:
    error = (200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,'
                  b'"message":"invalid argument 0: hex string without 0x prefix"}}')
    with (_serving([error, _result("0x1")], attempts) as (server, client),
          pytest.raises(RpcError) as raised):
        client.call("eth_getBlockByNumber", ["1", False])
    assert raised.value.code == -32602
    assert "hex string without 0x prefix" in raised.value.message
    assert len(server.requests) == 1
    assert attempts.errors == ["rpc_error"]
    assert server.script == [_result("0x1")]  # the answer a retry would have taken

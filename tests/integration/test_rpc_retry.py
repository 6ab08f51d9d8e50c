"""`HttpJsonRpc` against a scripted JSON-RPC server on 127.0.0.1: what is retried and what is not.

Rate limits and unavailable nodes are retried in the client, so one busy provider never fails a
range; a JSON-RPC error object is the node's answer and goes straight to the caller (which knows
whether e.g. "range too large" means shrink the range). Deterministic: the server answers from a
script, and the backoff is a millisecond.

The last test follows a range refusal through the listener: the client hands it over at once and
the listener reads the same blocks in smaller ranges, so nothing is skipped or read twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cardpay.handlers.chain import ChainSinkHandler
from domain.events import PaymentSpent
from domain.money import Currency
from listener.errors import RpcError, RpcTransportError
from listener.poller import Listener
from listener.presets import ChainConfig
from listener.rpc import HttpJsonRpc
from tests.fakes.storage import FakeDatabase
from tests.support.chain import EURE, SETTLEMENT, SPENDER, RecordedNode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Answer = tuple[int, bytes]

# Infura's answer to a rate-limited request: HTTP 429 *and* a JSON-RPC error body.
INFURA_429 = (429, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,'
                   b'"message":"daily request count exceeded, request rate limited"}}')
PLAIN_429 = (429, b'{"error":"rate limited"}')
UNAVAILABLE = (503, b"upstream unavailable")


def _result(value: Any) -> Answer:
    return 200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": value}).encode()


def _error(code: int, message: str) -> Answer:
    return 200, json.dumps({"jsonrpc": "2.0", "id": 1,
                            "error": {"code": code, "message": message}}).encode()


class ScriptedServer:
    """Answers each POST with the next scripted (status, body), then with `fallback` once the
    script is used up; records the requests."""

    def __init__(self, script: list[Answer],
                 fallback: Callable[[dict[str, Any]], Answer] | None = None) -> None:
        self.script = list(script)
        self.fallback = fallback
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                server.requests.append(request)
                status, payload = server.answer(request)
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

    def answer(self, request: dict[str, Any]) -> Answer:
        if self.script:
            return self.script.pop(0)
        return (500, b"script over") if self.fallback is None else self.fallback(request)

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
def _serving(script: list[Answer], attempts: Attempts, retries: int = 5,
             fallback: Callable[[dict[str, Any]], Answer] | None = None,
             ) -> Iterator[tuple[ScriptedServer, HttpJsonRpc]]:
    """The scripted server and a client of it with a millisecond backoff."""
    with ScriptedServer(script, fallback) as server:
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


def _refusing_wide_ranges(node: RecordedNode, widest: int) -> Callable[[dict[str, Any]], Answer]:
    """A provider in front of `node` that refuses eth_getLogs over more than `widest` blocks."""

    def answer(request: dict[str, Any]) -> Answer:
        method, params = request["method"], request["params"]
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if hi - lo + 1 > widest:
                return _error(-32005, "query returned more than 10000 results")
        try:
            return _result(node.call(method, params))
        except RpcError as exc:
            return _error(exc.code, exc.message)

    return answer


def _log_ranges(server: ScriptedServer) -> list[tuple[int, int]]:
    return [(int(r["params"][0]["fromBlock"], 16), int(r["params"][0]["toBlock"], 16))
            for r in server.requests if r["method"] == "eth_getLogs"]


def test_a_range_refusal_is_not_retried_by_the_client_and_the_listener_reads_smaller_ranges(
    attempts: Attempts,
) -> None:
    node = RecordedNode()
    for n in range(1, 21):
        node.add_spend(n, tx=n, amount=n * 10**18)
    config = ChainConfig(chain_id=100, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
                         tokens={EURE: Currency("EURe", 18)})
    db = FakeDatabase()
    with _serving([], attempts, fallback=_refusing_wide_ranges(node, widest=3)) as (server, rpc):
        listener = Listener("shrink", rpc, ChainSinkHandler(db.uow, chain_id=100), config,
                            start_block=1, confirmations=0, max_range=16)
        listener.run_until_caught_up()

    spent = [e for e in db.read().events.events_of_type(PaymentSpent)
             if isinstance(e, PaymentSpent)]
    assert sorted(e.amount.units for e in spent) == [n * 10**18 for n in range(1, 21)]
    cursor = db.read().chain.load_cursor("shrink")
    assert cursor is not None and cursor.block_number == 20
    ranges = _log_ranges(server)
    refused = [(lo, hi) for lo, hi in ranges if hi - lo + 1 > 3]
    read = [(lo, hi) for lo, hi in ranges if hi - lo + 1 <= 3]
    assert refused and refused[0] == (1, 16)
    assert len(ranges) == len(set(ranges))  # each refusal asked once: the client did not retry it
    assert attempts.errors.count("rpc_error") == len(refused)
    # The ranges read cover blocks 1-20 once each, in order.
    assert [n for lo, hi in read for n in range(lo, hi + 1)] == list(range(1, 21))

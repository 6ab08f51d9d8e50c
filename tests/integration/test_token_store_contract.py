"""The token store's contract (`TokenStore`), run against the in-memory fake and PostgreSQL: a
created token verifies with exactly its scopes, a malformed, unknown, wrongly guessed or revoked
one does not, a listing never shows a secret or a digest, and an unknown scope stores nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from cardpay.handlers.api_tokens import (
    FINANCE_READ,
    OPS_READ,
    OPS_WRITE,
    ApiToken,
    TokenStore,
    UnknownScope,
    digest,
)
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from tests.fakes.tokens import InMemoryTokenStore


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> TokenStore:
    if request.param == "memory":
        return InMemoryTokenStore()
    return PostgresTokenStore(request.getfixturevalue("pg_engine"))


def test_a_created_token_verifies_with_exactly_its_scopes(store: TokenStore) -> None:
    issued = store.create([OPS_READ, OPS_WRITE, OPS_READ], name="ops desk")
    assert issued.token.startswith(f"cp_{issued.info.token_id}_")
    assert issued.info.scopes == {OPS_READ, OPS_WRITE}
    assert (issued.info.name, issued.info.revoked_at, issued.info.last_used_at) == (
        "ops desk", None, None)
    assert store.verify(issued.token) == {OPS_READ, OPS_WRITE}
    other = store.create([FINANCE_READ])
    assert other.token != issued.token and other.info.token_id != issued.info.token_id
    assert other.info.name is None
    assert store.verify(other.token) == {FINANCE_READ}


def test_malformed_unknown_and_guessed_tokens_verify_to_nothing(store: TokenStore) -> None:
    issued = store.create([FINANCE_READ])
    _, token_id, secret = issued.token.split("_", 2)
    guessed = "A" * len(secret) if secret != "A" * len(secret) else "B" * len(secret)
    for bad in ("", "cp_", issued.token + "x", issued.token[:-1], issued.token.upper(),
                f"xx_{token_id}_{secret}", f"cp_{token_id}{secret}", " " + issued.token,
                f"cp_{'0' * 16}_{secret}",  # an id no token has
                f"cp_{token_id}_{guessed}",  # the right id with another secret
                "Bearer " + issued.token):
        assert store.verify(bad) is None, bad
    assert store.verify(issued.token) == {FINANCE_READ}


def test_a_revoked_token_verifies_to_nothing_and_stays_listed(store: TokenStore) -> None:
    kept, revoked = store.create([OPS_READ]), store.create([OPS_READ])
    first = store.revoke(revoked.info.token_id)
    assert first is not None and first.revoked_at is not None
    assert store.verify(revoked.token) is None
    assert store.verify(kept.token) == {OPS_READ}
    again = store.revoke(revoked.info.token_id)
    assert again is not None and again.revoked_at == first.revoked_at  # the first revocation
    assert store.revoke("0" * 16) is None
    listed = {t.token_id: t for t in store.list()}
    assert listed[revoked.info.token_id].revoked_at == first.revoked_at
    assert listed[kept.info.token_id].revoked_at is None


def test_a_listing_shows_no_secret_and_no_digest(store: TokenStore) -> None:
    issued = [store.create([FINANCE_READ], name="finance"), store.create([OPS_READ, OPS_WRITE])]
    listed = store.list()
    assert [t.token_id for t in listed] == [i.info.token_id for i in issued]  # oldest first
    assert [t.scopes for t in listed] == [{FINANCE_READ}, {OPS_READ, OPS_WRITE}]
    assert set(ApiToken.__dataclass_fields__) == {
        "token_id", "name", "scopes", "created_at", "revoked_at", "last_used_at"}
    for token, shown in zip(issued, listed, strict=True):
        secret = token.token.split("_", 2)[2]  # cp_<hex id>_<secret>: the secret may hold "_"
        assert secret not in repr(shown)
        assert digest(token.token).hex() not in repr(shown)
        assert secret not in repr(token)  # the issued token's repr hides it too


def test_verifying_notes_when_a_token_was_last_used(store: TokenStore) -> None:
    issued = store.create([OPS_READ])
    _, token_id, secret = issued.token.split("_", 2)
    store.verify(f"cp_{token_id}_{'A' * len(secret)}")  # a failed guess is no use
    [before] = store.list()
    assert before.last_used_at is None
    store.verify(issued.token)
    [after] = store.list()
    assert after.last_used_at is not None and after.last_used_at >= after.created_at


@pytest.mark.parametrize("scopes", [["finance:write"], [OPS_READ, "admin"], [], ["OPS:READ"]])
def test_an_unknown_scope_or_none_stores_nothing(store: TokenStore, scopes: list[str]) -> None:
    with pytest.raises(UnknownScope):
        store.create(scopes)
    assert store.list() == []


# -- PostgreSQL only: what the table holds ----------
@pytest.mark.integration
def test_the_table_holds_the_digest_not_the_token(pg_engine: Engine) -> None:
    issued = PostgresTokenStore(pg_engine).create([OPS_READ], name="n")
    secret = issued.token.rsplit("_", 1)[1]
    with pg_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_tokens")).one()._mapping
    assert bytes(row["digest"]) == digest(issued.token)
    assert all(secret not in str(value) for value in row.values())


@pytest.mark.integration
@pytest.mark.parametrize("scopes, digest_bytes", [("{admin}", 32), ("{}", 32),
                                                  ("{ops:read}", 31)])
def test_the_database_refuses_an_unknown_scope_or_a_short_digest(
        pg_engine: Engine, scopes: str, digest_bytes: int) -> None:
    with pytest.raises(IntegrityError), pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO api_tokens (id, scopes, digest) VALUES "
                          "('0123456789abcdef', :scopes, :digest)"),
                     {"scopes": scopes, "digest": b"\0" * digest_bytes})


"""`cardpay tokens` on real PostgreSQL, as a user runs it: a token is printed once and works, the
listing never shows a secret, a revoked token stops working, and mistakes are one line."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from tests.support.cli import message_lines, run_cardpay

pytestmark = pytest.mark.integration


def cardpay(pg_url: str, *args: str) -> tuple[int, str, str]:
    done = run_cardpay(args, {"CARDPAY_DATABASE_URL": pg_url})
    return done.returncode, done.stdout, done.stderr


def test_tokens_are_created_once_listed_without_secrets_and_revoked(
        pg_url: str, pg_engine: Engine) -> None:
    store = PostgresTokenStore(pg_engine)
    status, out, err = cardpay(pg_url, "tokens", "create", "--scope", "ops:read",
                               "--scope", "ops:write", "--name", "ops desk")
    assert status == 0, err
    [token] = out.split()  # the token alone on stdout
    assert store.verify(token) == {"ops:read", "ops:write"}
    token_id = token.split("_")[1]
    assert message_lines(err) == [f"token {token_id} created with ops:read, ops:write: shown "
                                  "once, cardpay keeps only its hash"]

    status, out, err = cardpay(pg_url, "tokens", "create", "--scope", "finance:read", "--json")
    assert status == 0, err
    created = json.loads(out)
    assert (created["scopes"], created["name"], created["revoked_at"]) == (
        ["finance:read"], None, None)
    assert store.verify(created["token"]) == {"finance:read"}

    secrets = [t.rsplit("_", 1)[1] for t in (token, created["token"])]
    listings = {fmt: cardpay(pg_url, "tokens", "list", *flags)
                for fmt, flags in (("table", ()), ("json", ("--json",)),
                                   ("csv", ("--format", "csv")))}
    for status, out, err in listings.values():
        assert status == 0, err
        assert all(secret not in out for secret in secrets)
    listed = json.loads(listings["json"][1])
    assert [(t["id"], t["name"], t["scopes"]) for t in listed] == [
        (token_id, "ops desk", ["ops:read", "ops:write"]),
        (created["id"], None, ["finance:read"])]
    assert listed[0]["last_used_at"] is not None  # verified above
    csv_lines = listings["csv"][1].splitlines()
    assert csv_lines[0] == "id,name,scopes,created_at,last_used_at,revoked_at"
    assert csv_lines[1].startswith(f"{token_id},ops desk,ops:read ops:write,")
    assert "ops desk" in listings["table"][1] and token_id in listings["table"][1]

    status, out, err = cardpay(pg_url, "tokens", "revoke", token_id)
    assert status == 0, err
    assert out.startswith(f"token {token_id} revoked at ")
    assert store.verify(token) is None
    assert store.verify(created["token"]) == {"finance:read"}
    again = cardpay(pg_url, "tokens", "revoke", token_id)
    assert again[0] == 0 and again[1] == out  # the first revocation's time

    status, out, err = cardpay(pg_url, "tokens", "revoke", "0123456789abcdef")
    assert status == 1
    assert message_lines(err) == ["cardpay tokens revoke: no token with id '0123456789abcdef': "
                                  "`cardpay tokens list` shows the ids"]


@pytest.mark.parametrize("args, says", [
    (("--scope", "ops:admin"), "argument --scope: unknown scope 'ops:admin' (known: "
     "finance:read, ops:read, ops:write)"),
    ((), "the following arguments are required: --scope"),
])
def test_a_bad_scope_is_one_line_and_exit_2(pg_url: str, pg_engine: Engine,
                                             args: tuple[str, ...], says: str) -> None:
    status, out, err = cardpay(pg_url, "tokens", "create", *args)
    assert status == 2 and out == ""
    assert message_lines(err) == [f"cardpay tokens create: {says} (see `cardpay tokens create "
                                  "--help`)"]
    assert PostgresTokenStore(pg_engine).list() == []

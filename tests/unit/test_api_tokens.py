"""The token format, its parsing, the digest comparison and the scope set
(`cardpay.handlers.api_tokens`), without any storage."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardpay.handlers.api_tokens import (
    SCOPES,
    UnknownScope,
    check_scopes,
    digest,
    generate,
    matches,
    token_id_of,
)

pytestmark = pytest.mark.unit


def test_a_generated_token_is_prefix_id_and_256_random_bits() -> None:
    new = generate()
    prefix, token_id, secret = new.token.split("_", 2)
    assert (prefix, token_id) == ("cp", new.token_id)
    assert len(token_id) == 16 and int(token_id, 16) >= 0
    assert len(secret) == 43  # base64url of 32 bytes, no padding
    assert token_id_of(new.token) == new.token_id
    assert new.digest == hashlib.sha256(new.token.encode()).digest()
    assert new.token not in repr(new) and new.digest.hex() not in repr(new)
    assert len({generate().token for _ in range(50)}) == 50


def test_a_secret_with_underscores_and_dashes_still_parses() -> None:
    token = "cp_00ff00ff00ff00ff_" + "_-" * 21 + "a"
    assert token_id_of(token) == "00ff00ff00ff00ff"


@pytest.mark.parametrize("text", [
    "", "cp", "cp__", "cp_00ff00ff00ff00ff_", "cp_00FF00FF00FF00FF_" + "a" * 43,
    "cp_00ff00ff00ff00f_" + "a" * 43, "cp_00ff00ff00ff00ff_" + "a" * 42,
    "cp_00ff00ff00ff00ff_" + "a" * 44, "cp_00ff00ff00ff00ff_" + "a" * 42 + "=",
    "cp_00ff00ff00ff00ff_" + "a" * 43 + "\n", "gh_00ff00ff00ff00ff_" + "a" * 43,
    "cp_00ff00ff00ff00ff_" + "a" * 42 + "é",
])
def test_text_that_cannot_be_a_token_has_no_id(text: str) -> None:
    assert token_id_of(text) is None


@given(st.text(max_size=80))
def test_no_text_crashes_the_parser(text: str) -> None:
    found = token_id_of(text)
    assert found is None or text.startswith(f"cp_{found}_")


def test_only_the_same_token_matches_its_digest() -> None:
    new = generate()
    assert matches(new.token, new.digest)
    assert not matches(new.token[:-1] + ("b" if new.token[-1] != "b" else "c"), new.digest)
    assert not matches(generate().token, new.digest)
    assert digest(new.token) == new.digest


def test_scopes_are_a_closed_set() -> None:
    assert sorted(SCOPES) == ["finance:read", "ops:read", "ops:write"]
    assert check_scopes(["ops:read", "ops:read"]) == {"ops:read"}
    with pytest.raises(UnknownScope, match=r"unknown scope 'ops:admin'.*finance:read"):
        check_scopes(["ops:read", "ops:admin"])
    with pytest.raises(UnknownScope, match="at least one scope"):
        check_scopes([])


def test_the_finance_filters_name_every_status_the_read_model_writes() -> None:
    from typing import get_args

    from cardpay.handlers.finance import NetworkStatus
    from domain.card_network import Network

    assert set(get_args(NetworkStatus)) == {n.value for n in Network}

"""`cardpay deploy` registers the local cardholders' cards; `cardpay cards` lists and changes
them, and says what is wrong in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import message_lines, run_cardpay

pytestmark = pytest.mark.e2e


def test_deploy_registers_cards_and_the_cards_commands_manage_them(
        anvil_node: Any, pg_url: str, tmp_path: Path) -> None:
    env = {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_RPC_URL": anvil_node.rpc_url,
           "CARDPAY_CONFIRMATIONS": "0", "CARDPAY_DATA_DIR": str(tmp_path)}
    deploy = run_cardpay(("deploy", "--cardholders", "2"), env)
    assert deploy.returncode == 0, deploy.stderr
    assert "registered 2 EURe cards" in deploy.stdout
    deployment = json.loads((tmp_path / "local-deployment.json").read_text())

    listed = run_cardpay(("cards", "list", "--json"), env)
    assert listed.returncode == 0, listed.stderr
    cards = json.loads(listed.stdout)
    assert [c["card_id"] for c in cards] == ["local-0000", "local-0001"]
    assert [c["safe"] for c in cards] == [s.lower() for s in deployment["cardholders"]]
    assert {(c["status"], c["currency"], c["balance"], c["decimals"]) for c in cards} == {
        ("active", "EURe", str(10_000 * 10**18), 18)}
    assert all(c["allowance_left"] == str(1_000_000 * 10**18) for c in cards)

    safe = deployment["cardholders"][1]
    added = run_cardpay(("cards", "add", "usd-1", "--safe", safe, "--token", "USDCe",
                         "--block-mcc", "7995", "--velocity-limit", "5"), env)
    assert added.returncode == 0, added.stderr
    assert "balance 10000.00 USDCe" in added.stdout and "daily allowance left" in added.stdout

    assert run_cardpay(("cards", "freeze", "usd-1"), env).stdout.strip() == "card usd-1 is frozen"
    assert run_cardpay(("cards", "unfreeze", "usd-1"), env).returncode == 0
    assert run_cardpay(("cards", "close", "usd-1"), env).returncode == 0
    table = run_cardpay(("cards", "list"), env).stdout
    assert "usd-1" in table and "closed" in table and "7995" in table

    for args, status, words in [
        (("cards", "unfreeze", "usd-1"), 1, "closed"),
        (("cards", "freeze", "nope"), 1, "no card 'nope'"),
        (("cards", "add", "usd-1", "--safe", safe, "--token", "USDCe"), 1, "already registered"),
        (("cards", "add", "x", "--safe", "0x12", "--token", "EURe"), 2, "not an address"),
        (("cards", "add", "x", "--safe", safe, "--token", "DOGE"), 2, "known: EURe, USDCe"),
        (("cards", "add", "x", "--safe", safe, "--token", "EURe", "--block-mcc", "12345"), 2,
         "4 digits"),
    ]:
        result = run_cardpay(args, env)
        lines = message_lines(result.stderr)
        assert (result.returncode, len(lines)) == (status, 1), (args, result.stderr)
        assert words in lines[0], (args, lines)

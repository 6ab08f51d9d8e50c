"""The local replicas reproduce the mainnet log shapes that trap an indexer, on a real Anvil.

gnosis-pay-onchain.md §1a and §3: a transfer through the EURe v1 frontend emits the v2 Transfer and
then an identical v1 Transfer in the same transaction; a card spend is made by the cardholder's
Roles module (which emits ConsumeAllowance) and its Spend names that module, not the Safe, as
`account`. The listener must count every spend and refund once and resolve the Safe. The last
tests replay anvil-fixtures/local/basic (written by tools/record_local_run.py) through
`cardpay replay --preset local` and check it against an eth-abi decode of the recorded logs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from sqlalchemy import Engine, select
from web3 import Web3

from cardpay.bootstrap.demo import chain_config
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.artifacts import load_artifact
from cardpay.devstack.local_chain import (
    CONSUME_ALLOWANCE_EVENT_TOPIC0,
    SPEND_EVENT_TOPIC0,
    SPENDING_ALLOWANCE_KEY,
    TRANSFER_EVENT_TOPIC0,
    LocalChain,
    LocalDeployment,
    TransactionReverted,
)
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.schema import chain_activity
from cardpay.postgres.uow import PostgresUnitOfWork, unit_of_work_factory
from domain.commands import RecordRefundSubmission, RequestRefund
from domain.money import Currency, Money
from listener.presets import local_config
from tests.support.indexing import canonical_views, make_listener, project

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "anvil-fixtures" / "local" / "basic"
RECORDER = REPO / "tools" / "record_local_run.py"
ZERO = "0x" + "00" * 20
# Zodiac Roles v2 / Safe signatures (gnosis-pay-onchain.md §3).
REAL_CONSUME_ALLOWANCE = "0x90355d540c2980efb4c360996dfc5405ee87e812e4f3db843857547cbdb5af65"
REAL_SPENDING_ALLOWANCE = "0xfe687fc128d1915040376d20ccb1bf40d838ddd82bf9b0ba3da683cc2a251623"
EXECUTION_FROM_MODULE_SUCCESS = "0x6895c13664aa4f67288b25d7a21d7aaa34916e355fb9b6fae0a139a9085becb8"


def _low(address: str) -> str:
    return address.lower()


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def _word(address: str) -> str:
    return "0x" + address.lower()[2:].rjust(64, "0")


def _receipt_logs(chain: LocalChain, tx_hash: str) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = chain.receipt(tx_hash)["logs"]
    return logs


def _call(chain: LocalChain, to: str, contract: str, fn: str, *args: Any, sender: str = "") -> Any:
    """eth_call; returns the raw result, or the error message when it reverts."""
    data = chain.w3.eth.contract(abi=load_artifact(contract).abi).encode_abi(fn, args=list(args))
    call = {"to": to, "data": data, **({"from": sender} if sender else {})}
    response = chain.w3.provider.make_request("eth_call", [call, "latest"])  # type: ignore[arg-type]
    if "error" in response:
        return str(response["error"].get("message"))
    return response["result"]


def _uint(raw: str) -> int:
    return int(raw, 16)


# -- log shapes -----------------------------------------------------------------------------


def test_real_signatures() -> None:
    assert Web3.keccak(text="ConsumeAllowance(bytes32,uint128,uint128)").to_0x_hex() == (
        REAL_CONSUME_ALLOWANCE
    )
    assert Web3.keccak(text="SPENDING_ALLOWANCE").to_0x_hex() == REAL_SPENDING_ALLOWANCE
    assert CONSUME_ALLOWANCE_EVENT_TOPIC0 == REAL_CONSUME_ALLOWANCE
    assert SPENDING_ALLOWANCE_KEY == REAL_SPENDING_ALLOWANCE
    event = load_artifact("RolesModule").event_abi("ConsumeAllowance")
    assert [(i["type"], i["indexed"]) for i in event["inputs"]] == [
        ("bytes32", False), ("uint128", False), ("uint128", False)
    ]  # fmt: skip
    assert Web3.keccak(text="ExecutionFromModuleSuccess(address)").to_0x_hex() == (
        EXECUTION_FROM_MODULE_SUCCESS
    )


def test_eure_spend_has_the_mainnet_log_order(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    eure = d.token("EURe")
    assert eure.mirror is not None and eure.spend_address == eure.mirror
    safe, roles = d.cardholders[0], d.roles_modules[0]
    left_before = local_chain.allowance_left(0, "EURe")
    amount = 8_500_000_000_000_000_000

    logs = _receipt_logs(local_chain, local_chain.spend("EURe", 0, amount))

    # Mainnet logs #4, #5, #6, #7, #9 (the validator's Decision, HashExecuted and the Spender
    # Safe's logs have no replica): v2 Transfer, identical v1 Transfer, the Safe's
    # ExecutionFromModuleSuccess, ConsumeAllowance from the Roles module, Spend.
    assert [(_low(log["address"]), log["topics"][0]) for log in logs] == [
        (_low(eure.address), TRANSFER_EVENT_TOPIC0),
        (_low(eure.mirror), TRANSFER_EVENT_TOPIC0),
        (_low(safe), EXECUTION_FROM_MODULE_SUCCESS),
        (_low(roles), REAL_CONSUME_ALLOWANCE),
        (_low(d.spender_module), SPEND_EVENT_TOPIC0),
    ]
    v2, v1, success, consume, spend = logs
    assert v1["topics"] == v2["topics"] and v1["data"] == v2["data"]
    assert v2["topics"][1:] == [_word(safe), _word(d.settlement_account)]
    assert _uint(v2["data"]) == amount
    assert success["topics"][1] == _word(roles)
    assert consume["topics"] == [REAL_CONSUME_ALLOWANCE]
    key, consumed, new_balance = abi_decode(
        ["bytes32", "uint128", "uint128"], bytes.fromhex(consume["data"][2:])
    )
    assert "0x" + key.hex() == REAL_SPENDING_ALLOWANCE
    assert consumed == amount
    assert new_balance == left_before - amount == local_chain.allowance_left(0, "EURe")
    assert spend["topics"] == [SPEND_EVENT_TOPIC0]
    asset, account, receiver, spent = abi_decode(
        ["address", "address", "address", "uint256"], bytes.fromhex(spend["data"][2:])
    )
    assert (_low(asset), _low(account), _low(receiver), spent) == (
        _low(eure.mirror), _low(roles), _low(d.settlement_account), amount
    )  # fmt: skip
    assert _low(account) != _low(safe)


def test_usdce_spend_has_a_single_transfer(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    usdce = d.token("USDCe")
    assert usdce.mirror is None and usdce.spend_address == usdce.address

    logs = _receipt_logs(local_chain, local_chain.spend("USDCe", 1, 12_340_000))

    assert [(_low(log["address"]), log["topics"][0]) for log in logs] == [
        (_low(usdce.address), TRANSFER_EVENT_TOPIC0),
        (_low(d.cardholders[1]), EXECUTION_FROM_MODULE_SUCCESS),
        (_low(d.roles_modules[1]), REAL_CONSUME_ALLOWANCE),
        (_low(d.spender_module), SPEND_EVENT_TOPIC0),
    ]


def test_a_mint_is_a_transfer_on_v2_only(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    eure = d.token("EURe")
    assert eure.mirror is not None
    safe = d.cardholders[2]
    before = local_chain.balance_of("EURe", safe)

    logs = _receipt_logs(local_chain, local_chain.mint("EURe", safe, 5 * 10**18))

    assert [(_low(log["address"]), log["topics"]) for log in logs] == [
        (_low(eure.address), [TRANSFER_EVENT_TOPIC0, _word(ZERO), _word(safe)])
    ]
    # The frontend has no balances of its own: it shows the v2 ones.
    shown = _call(local_chain, eure.mirror, "TokenFrontend", "balanceOf", safe)
    assert _uint(shown) == before + 5 * 10**18 == local_chain.balance_of("EURe", safe)


def test_only_the_frontend_moves_balances_on_v2(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    eure = d.token("EURe")
    owner = d.cardholder_owners[0]
    message = _call(
        local_chain, eure.address, "CardToken", "transfer_withCaller",
        d.cardholders[0], owner, 1, sender=owner,
    )  # fmt: skip
    assert "CardToken: caller is not the frontend" in message
    message = _call(local_chain, eure.address, "CardToken", "setFrontend", owner, sender=d.deployer)
    assert "CardToken: frontend already set" in message


def test_the_roles_module_guards_the_safe(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    roles, safe = d.roles_modules[3], d.cardholders[3]
    assert _topic_address(_call(local_chain, roles, "RolesModule", "avatar")) == _low(safe)
    assert _topic_address(_call(local_chain, roles, "RolesModule", "target")) == _low(safe)
    assert _uint(_call(local_chain, safe, "CardholderSafe", "isModuleEnabled", roles)) == 1
    transfer = local_chain.w3.eth.contract(abi=load_artifact("CardToken").abi).encode_abi(
        "transfer", args=[d.relayer, 1]
    )
    # Only the spender module holds SPENDING_ROLE: the relayer itself cannot use the module.
    message = _call(
        local_chain, roles, "RolesModule", "execTransactionWithRole",
        d.token("EURe").spend_address, 0, bytes.fromhex(transfer[2:]), 0,
        bytes.fromhex(REAL_SPENDING_ALLOWANCE[2:]), True, sender=d.relayer,
    )  # fmt: skip
    assert "RolesModule: caller does not have the spending role" in message
    # The scope allows transfers to the settlement account only.
    with pytest.raises(TransactionReverted, match="RolesModule: recipient not allowed"):
        local_chain.spend("EURe", 3, 10**18, receiver=d.relayer)
    # A token that is not scoped (here: EURe through v2, not the v1 address mainnet scopes).
    tx = local_chain.spend_request("EURe", 3, 10**18)
    tx["data"] = tx["data"].replace(
        d.token("EURe").spend_address.lower()[2:], d.token("EURe").address.lower()[2:]
    )
    response = local_chain.w3.provider.make_request("eth_call", [tx, "latest"])  # type: ignore[arg-type]
    assert "RolesModule: token not scoped" in str(response["error"]["message"])
    # Only the Safe's owner enables modules.
    message = _call(local_chain, safe, "CardholderSafe", "enableModule", d.relayer,
                    sender=d.relayer)  # fmt: skip
    assert "CardholderSafe: caller is not the owner" in message


def test_a_spend_over_the_daily_allowance_reverts_then_the_allowance_refills(
    local_chain: LocalChain, anvil_node: AnvilNode
) -> None:
    d = local_chain.deployment
    local_chain.set_daily_allowance(1, "EURe", 10 * 10**18)
    usdce_left = local_chain.allowance_left(1, "USDCe")
    local_chain.spend("EURe", 1, 6 * 10**18)
    assert local_chain.allowance_left(1, "EURe") == 4 * 10**18
    balance = local_chain.balance_of("EURe", 1)

    with pytest.raises(TransactionReverted) as info:
        local_chain.spend("EURe", 1, 5 * 10**18)

    assert "RolesModule: amount exceeds the daily allowance" in str(info.value)
    receipt = local_chain.receipt(info.value.tx_hash)
    assert receipt["status"] == "0x0" and receipt["logs"] == []
    assert local_chain.balance_of("EURe", 1) == balance
    assert local_chain.allowance_left(1, "EURe") == 4 * 10**18
    assert local_chain.allowance_left(1, "USDCe") == usdce_left  # one allowance per token

    anvil_node.rpc("evm_increaseTime", [86_400])
    anvil_node.rpc("anvil_mine", ["0x1"])
    assert local_chain.allowance_left(1, "EURe") == 10 * 10**18
    logs = _receipt_logs(local_chain, local_chain.spend("EURe", 1, 5 * 10**18))
    (consume,) = [log for log in logs if log["topics"][0] == REAL_CONSUME_ALLOWANCE]
    assert _low(consume["address"]) == _low(d.roles_modules[1])
    assert abi_decode(["bytes32", "uint128", "uint128"], bytes.fromhex(consume["data"][2:]))[
        1:
    ] == (5 * 10**18, 5 * 10**18)


def test_deployment_round_trips_with_mirror_and_roles_modules(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    data = json.loads(json.dumps(d.to_dict()))
    assert data["tokens"]["EURe"]["mirror"] == d.token("EURe").mirror
    assert "mirror" not in data["tokens"]["USDCe"]
    assert data["roles_modules"] == list(d.roles_modules)
    assert len(d.roles_modules) == len(d.cardholders)
    assert not set(d.roles_modules) & set(d.cardholders)
    assert LocalDeployment.from_dict(data) == d
    config = local_config(data)
    mirror, v2 = _low(d.token("EURe").mirror or ""), _low(d.token("EURe").address)
    assert config.mirrors == {mirror: v2}
    assert config.tokens[mirror] == config.tokens[v2]
    assert d.roles_module(d.cardholders[2]) == d.roles_modules[2] == d.roles_module(2)


# -- the listener on these shapes -----------------------------------------------------------


def test_the_listener_counts_each_spend_and_refund_once_and_resolves_the_safe(
    local_chain: LocalChain, pg_engine: Engine
) -> None:
    d = local_chain.deployment
    eure, usdce = d.token("EURe"), d.token("USDCe")
    spends = [("EURe", i, (i + 1) * 10**18 + 7) for i in range(5)]
    spends += [("EURe", 0, 3 * 10**18), ("USDCe", 1, 2_500_000), ("USDCe", 2, 7_250_000)]
    hashes = [h.lower() for h in local_chain.spend_many(spends)]
    local_chain.set_daily_allowance(3, "EURe", 10**18)
    with pytest.raises(TransactionReverted, match="exceeds the daily allowance") as info:
        local_chain.spend("EURe", 3, 2 * 10**18)
    reverted_tx = info.value.tx_hash.lower()

    listener = make_listener(pg_engine, local_chain.rpc_url, chain_config(d), d.deployed_at_block)
    listener.run_until_caught_up()
    project(pg_engine)
    payments, _ = canonical_views(pg_engine)
    by_tx = {p[6]: p for p in payments}
    assert sorted(by_tx) == sorted(hashes)

    # Refund half of six payments: three single refunds, then one batch of three legs.
    uows = unit_of_work_factory(pg_engine, None)
    service = PaymentService(uows)
    now = datetime.now(UTC)
    refunds: dict[str, int] = {}
    refund_ids: dict[str, str] = {}
    chosen = [hashes[0], hashes[1], hashes[6], hashes[2], hashes[3], hashes[4]]
    for tx in chosen:
        payment_id, _account, currency = by_tx[tx][:3]
        symbol, _holder, amount = spends[hashes.index(tx)]
        refunds[tx], refund_ids[tx] = amount // 2, str(uuid.uuid4())
        service.submit(RequestRefund(
            command_id=f"rq:{tx}", payment_id=payment_id, at=now, refund_id=refund_ids[tx],
            amount=Money(amount // 2, Currency(currency, d.token(symbol).decimals)), reason="test",
        ))  # fmt: skip
    sent = [(tx, local_chain.refund(spends[hashes.index(tx)][0], spends[hashes.index(tx)][1],
                                     refunds[tx])) for tx in chosen[:3]]  # fmt: skip
    batch_tx = local_chain.refund_batch(
        "EURe", [(spends[hashes.index(tx)][1], refunds[tx]) for tx in chosen[3:]]
    )
    sent += [(tx, batch_tx) for tx in chosen[3:]]
    for tx, refund_tx in sent:
        payment_id, account = by_tx[tx][:2]
        symbol = spends[hashes.index(tx)][0]
        service.record_refund_submission(
            RecordRefundSubmission(command_id=f"rs:{tx}", payment_id=payment_id, at=now,
                                   refund_id=refund_ids[tx], tx_hash=refund_tx),
            recipient=account, token=d.token(symbol).address, amount=refunds[tx],
        )  # fmt: skip
    listener.run_until_caught_up()
    project(pg_engine)

    payments, _ = canonical_views(pg_engine)
    assert len(payments) == len(spends)
    cardholders = {_low(c) for c in d.cardholders}
    for payment_id, account, currency, _status, spent, refunded, spend_tx in payments:
        symbol, holder, amount = spends[hashes.index(spend_tx)]
        assert account == _low(d.cardholders[holder])  # the Safe ...
        assert account not in {_low(m) for m in d.roles_modules}  # ... not Spend.account
        assert (currency, int(spent)) == (symbol, amount)  # counted once
        assert int(refunded) == refunds.get(spend_tx, 0), payment_id  # not twice
    with pg_engine.connect() as conn:
        rows = conn.execute(
            select(chain_activity.c.tx_hash, chain_activity.c.kind, chain_activity.c.token,
                   chain_activity.c.symbol, chain_activity.c.sender, chain_activity.c.amount,
                   chain_activity.c.cardholder)
        ).all()  # fmt: skip
    assert {r.token for r in rows} == {_low(eure.address), _low(usdce.address)}  # no v1 rows
    card_spends = sorted((r.tx_hash, r.symbol, int(r.amount), r.cardholder)
                         for r in rows if r.kind == "card_spend")  # fmt: skip
    assert card_spends == sorted(
        (tx, s, a, _low(d.cardholders[h])) for tx, (s, h, a) in zip(hashes, spends, strict=True)
    )
    refund_rows = sorted((r.tx_hash, int(r.amount), r.cardholder)
                         for r in rows if r.kind == "refund")  # fmt: skip
    assert refund_rows == sorted(
        (refund_tx.lower(), refunds[tx], _low(d.cardholders[spends[hashes.index(tx)][1]]))
        for tx, refund_tx in sent
    )
    assert all(r.cardholder in cardholders for r in rows if r.kind in ("card_spend", "refund"))
    assert reverted_tx not in {r.tx_hash for r in rows} | set(by_tx)
    with PostgresUnitOfWork(pg_engine) as uow:
        assert uow.quarantine.list() == []


# -- a recorded run, replayed ---------------------------------------------------------------


def _recorded_logs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RECORDING / "logs.jsonl").read_text().splitlines()]


def _expected_totals(deployment: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per class and token, from the v2 and USDCe Transfers (never the v1 mirror), by eth-abi."""
    symbols = {_low(t["address"]): s for s, t in deployment["tokens"].items()}
    settlement = _low(deployment["settlement_account"])
    totals: dict[str, dict[str, dict[str, Any]]] = {}
    for log in _recorded_logs():
        if log["topics"][0] != TRANSFER_EVENT_TOPIC0 or log["address"] not in symbols:
            continue
        sender, recipient = _topic_address(log["topics"][1]), _topic_address(log["topics"][2])
        (value,) = abi_decode(["uint256"], bytes.fromhex(log["data"][2:]))
        if recipient == settlement:
            kind = "card_spend"
        elif sender == settlement:
            kind = "refund"
        elif sender == ZERO:
            kind = "top_up"
        else:
            kind = "other"
        entry = totals.setdefault(kind, {}).setdefault(
            symbols[log["address"]], {"count": 0, "amount": "0"}
        )
        entry["count"] += 1
        entry["amount"] = str(int(entry["amount"]) + value)
    return totals


def test_the_recorded_run_replays_to_the_expected_totals() -> None:
    deployment = json.loads((RECORDING / "deployment.json").read_text())
    logs = _recorded_logs()
    eure = deployment["tokens"]["EURe"]
    mirror, spender = _low(eure["mirror"]), _low(deployment["spender_module"])
    spend_logs = [log for log in logs if log["topics"][0] == SPEND_EVENT_TOPIC0]
    expected = _expected_totals(deployment)
    # The trap is in the recording: every EURe spend and refund leg also has its v1 twin.
    v1 = [log for log in logs if log["address"] == mirror]
    assert len(v1) == expected["card_spend"]["EURe"]["count"] + expected["refund"]["EURe"]["count"]
    assert len(spend_logs) == sum(e["count"] for e in expected["card_spend"].values())
    assert {log["address"] for log in spend_logs} == {spender}
    assert set(expected) == {"card_spend", "refund", "top_up"}

    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "replay", str(RECORDING), "--preset", "local",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    assert report["totals"] == expected
    cardholders = {_low(c) for c in deployment["cardholders"]}
    spends = [a for a in report["activity"] if a["class"] == "card_spend"]
    assert spends and all(a["cardholder"] in cardholders for a in spends)
    assert all(a["from"] == a["cardholder"] for a in spends)
    assert len(report["payments"]) == len(spend_logs)
    assert all(p["cardholder"] in cardholders for p in report["payments"])
    assert not {p["cardholder"] for p in report["payments"]} & {
        _low(m) for m in deployment["roles_modules"]
    }
    # The local preset matches refunds against submitted ones; a recording has none, so each
    # refund leg may be held in quarantine -- once, under its v2 log, never the v1 twin.
    refund_keys = {
        f"chain:{deployment['chain_id']}:{log['blockHash']}:{int(log['logIndex'], 16)}"
        for log in logs
        if log["topics"][0] == TRANSFER_EVENT_TOPIC0
        and log["address"] != mirror
        and _topic_address(log["topics"][1]) == _low(deployment["settlement_account"])
    }
    assert {q["key"] for q in report["quarantined"]} in (set(), refund_keys)


def test_the_recorder_writes_a_replayable_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RECORDER), "small", "--out-dir", str(tmp_path), "--spends", "8",
         "--cardholders", "2", "--seed", "5"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    target = tmp_path / "small"
    deployment = LocalDeployment.from_dict(json.loads((target / "deployment.json").read_text()))
    assert len(deployment.cardholders) == len(deployment.roles_modules) == 2
    config = local_config(deployment.to_dict())
    logs = [json.loads(line) for line in (target / "logs.jsonl").read_text().splitlines()]
    blocks = [json.loads(line) for line in (target / "blocks.jsonl").read_text().splitlines()]
    assert all(config.subscribes(log["address"], log["topics"][0]) for log in logs)
    assert {b["number"] for b in blocks} == {log["blockNumber"] for log in logs}
    assert all(set(b) == {"number", "hash", "parentHash", "timestamp"} for b in blocks)
    hashes = {b["number"]: b["hash"] for b in blocks}
    assert all(hashes[log["blockNumber"]] == log["blockHash"] for log in logs)
    # 8 spends (6 EURe: v2, v1, ConsumeAllowance, Spend; 2 USDCe: Transfer, ConsumeAllowance,
    # Spend), 4 mints (v2 and USDCe only), 4 SetAllowance (2 cardholders x 2 tokens), 3 single
    # refunds (two in EURe), a 4-leg EURe batch.
    assert len(logs) == 6 * 4 + 2 * 3 + 4 + 4 + (2 * 2 + 1) + 4 * 2

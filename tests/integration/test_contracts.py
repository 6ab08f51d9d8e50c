"""The local Gnosis Pay replicas on a real Anvil: reproducible build, Spend/Transfer logs, refunds,
reverts, and the Anvil harness itself. The mainnet-shape details (EURe v1/v2 double Transfer, the
Roles module's ConsumeAllowance and daily limit) are in test_local_replicas.py.

Needs `npm ci` (Anvil and solcjs from npm). Uses the fixtures of tests/fixtures/anvil.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from web3 import Web3

from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.artifacts import load_artifact, load_safe_artifact
from cardpay.devstack.local_chain import (
    SAFE_L2_SINGLETON,
    SPEND_EVENT_TOPIC0,
    TRANSFER_EVENT_TOPIC0,
    LocalChain,
    TransactionReverted,
)
from cardpay.handlers.onchain import MULTI_SEND

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPILE_TOOL = REPO / "tools" / "compile_contracts.py"
REAL_SPEND_TOPIC0 = "0xca8fbb9bda99848f447971eae62ad0ad2bc7caf9afcc0d8e4e8ffcf7e06bc28f"
SENTINEL = "0x0000000000000000000000000000000000000001"
NOT_AUTHORIZED = Web3.keccak(text="NotAuthorized(address)")[:4].hex().removeprefix("0x")
"""Zodiac Modifier's error when `moduleOnly` refuses the caller."""


def _compile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPILE_TOOL), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def _topic_address(topic: str) -> str:
    return Web3.to_checksum_address("0x" + topic[-40:])


def _logs(chain: LocalChain, tx_hash: str) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = chain.receipt(tx_hash)["logs"]
    return logs


def _transfers(logs: list[dict[str, Any]], token: str) -> list[tuple[str, str, int]]:
    return [
        (_topic_address(log["topics"][1]), _topic_address(log["topics"][2]), int(log["data"], 16))
        for log in logs
        if log["topics"][0] == TRANSFER_EVENT_TOPIC0 and log["address"].lower() == token.lower()
    ]


# -- reproducible build ---------------------------------------------------------------------


def test_committed_artifacts_match_a_fresh_compile() -> None:
    result = _compile("--check")
    assert result.returncode == 0, (
        "tools/compile_contracts.py --check failed (if solcjs is missing: run `npm ci` in the "
        f"repo root)\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def test_check_reports_a_changed_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "contracts" / "src", src)
    module = src / "SpenderModule.sol"
    module.write_text(
        module.read_text().replace("caller is not the owner", "not the owner"), encoding="utf-8"
    )
    result = _compile("--check", "--src", str(src))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "differs: contracts/artifacts/SpenderModule.json" in result.stderr
    assert "bytecode" in result.stderr


def test_spend_event_abi_is_the_real_gnosis_pay_signature() -> None:
    assert Web3.keccak(text="Spend(address,address,address,uint256)").to_0x_hex() == (
        REAL_SPEND_TOPIC0
    )
    assert SPEND_EVENT_TOPIC0 == REAL_SPEND_TOPIC0
    event = load_artifact("SpenderModule").event_abi("Spend")
    signature = "Spend({})".format(",".join(i["type"] for i in event["inputs"]))
    assert Web3.keccak(text=signature).to_0x_hex() == REAL_SPEND_TOPIC0
    assert [i["name"] for i in event["inputs"]] == ["asset", "account", "receiver", "amount"]
    assert not any(i["indexed"] for i in event["inputs"])
    assert event["anonymous"] is False


def test_spend_takes_mainnets_five_argument_call() -> None:
    """spend(asset, account, receiver, amount, roleKey): selector 0x8a320255, as Gnosis Pay's
    Spender module (gnosis-pay-onchain.md §3); the Zodiac module-list functions are there."""
    artifact = load_artifact("SpenderModule")
    functions = {f["name"]: f for f in artifact.abi if f.get("type") == "function"}
    inputs = [i["type"] for i in functions["spend"]["inputs"]]
    assert inputs == ["address", "address", "address", "uint256", "bytes32"]
    assert Web3.keccak(text=f"spend({','.join(inputs)})")[:4].hex().removeprefix("0x") == \
        "8a320255"
    assert {"enableModule", "disableModule", "isModuleEnabled", "getModulesPaginated"} <= \
        set(functions)
    assert not {"addRelayer", "setRelayer", "isRelayer"} & set(functions)


# -- enabled modules --------------------------------------------------------------------------


def _spender(chain: LocalChain) -> Any:
    d = chain.deployment
    return chain.w3.eth.contract(address=Web3.to_checksum_address(d.spender_module),
                                 abi=load_artifact("SpenderModule").abi)


def test_the_spender_lists_its_enabled_modules_as_zodiac_does(local_chain: LocalChain) -> None:
    """enableModule puts the newest first; getModulesPaginated(SENTINEL, n) pages the list;
    disableModule(prev, module) takes one out; each emits Zodiac's event. Only the owner."""
    d = local_chain.deployment
    spender = _spender(local_chain)
    extra = Web3.to_checksum_address(local_chain.accounts[6])
    assert spender.functions.getModulesPaginated(SENTINEL, 10).call() == [[d.relayer], SENTINEL]
    assert spender.functions.isModuleEnabled(d.relayer).call()
    assert not spender.functions.isModuleEnabled(extra).call()

    with pytest.raises(TransactionReverted, match="caller is not the owner"):
        local_chain.transact("enableModule by a stranger", {
            "from": extra, "to": d.spender_module, "gas": hex(100_000),
            "data": spender.encode_abi("enableModule", args=[extra])})
    enabled = local_chain.transact("enableModule", {
        "from": d.deployer, "to": d.spender_module, "gas": hex(100_000),
        "data": spender.encode_abi("enableModule", args=[extra])})
    event = spender.events.EnabledModule().process_receipt(local_chain.receipt(enabled))
    assert [e["args"]["module"] for e in event] == [extra]
    assert spender.functions.getModulesPaginated(SENTINEL, 10).call() == \
        [[extra, d.relayer], SENTINEL]
    assert spender.functions.getModulesPaginated(SENTINEL, 1).call() == [[extra], extra]
    assert spender.functions.getModulesPaginated(extra, 1).call() == [[d.relayer], SENTINEL]
    local_chain.spend("EURe", 1, 10**18, sender=extra)  # the new module may spend

    disabled = local_chain.transact("disableModule", {
        "from": d.deployer, "to": d.spender_module, "gas": hex(100_000),
        "data": spender.encode_abi("disableModule", args=[SENTINEL, extra])})
    event = spender.events.DisabledModule().process_receipt(local_chain.receipt(disabled))
    assert [e["args"]["module"] for e in event] == [extra]
    assert spender.functions.getModulesPaginated(SENTINEL, 10).call() == [[d.relayer], SENTINEL]
    with pytest.raises(TransactionReverted, match=NOT_AUTHORIZED):
        local_chain.spend("EURe", 1, 10**18, sender=extra)


def test_a_spend_with_another_role_key_is_refused_by_the_roles_module(
    local_chain: LocalChain,
) -> None:
    """roleKey is passed through to the Roles module, which takes SPENDING_ROLE only."""
    d = local_chain.deployment
    request = local_chain.spend_request("EURe", 0, 10**18)
    data = request["data"][:-64] + "ab" * 32
    with pytest.raises(TransactionReverted, match="caller does not have the spending role"):
        local_chain.transact("spend with another roleKey", {**request, "data": data})
    assert local_chain.balance_of("EURe", d.settlement_account) == 0


# -- card spends ----------------------------------------------------------------------------


def test_spend_emits_one_spend_log_and_the_matching_transfer(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    eure = d.token("EURe")
    assert eure.mirror is not None
    account = d.cardholders[0]
    roles_module = d.roles_modules[0]
    amount = 8_500_000_000_000_000_000  # 8.5 EURe, as in the recorded mainnet spend
    before = local_chain.balance_of("EURe", account)

    tx_hash = local_chain.spend("EURe", account, amount)

    assert tx_hash.startswith("0x") and len(tx_hash) == 66
    receipt = local_chain.receipt(tx_hash)
    assert receipt["status"] == "0x1"
    assert Web3.to_checksum_address(receipt["from"]) == d.relayer
    assert Web3.to_checksum_address(receipt["to"]) == d.spender_module
    logs = receipt["logs"]
    spends = [log for log in logs if log["topics"][0] == REAL_SPEND_TOPIC0]
    assert len(spends) == 1
    spend_log = spends[0]
    assert Web3.to_checksum_address(spend_log["address"]) == d.spender_module
    assert spend_log["topics"] == [REAL_SPEND_TOPIC0]  # nothing indexed
    asset, decoded_account, receiver, decoded_amount = abi_decode(
        ["address", "address", "address", "uint256"], bytes.fromhex(spend_log["data"][2:])
    )
    assert Web3.to_checksum_address(asset) == eure.mirror  # the v1 address, as on mainnet
    assert Web3.to_checksum_address(decoded_account) == roles_module  # not the Safe
    assert Web3.to_checksum_address(receiver) == d.settlement_account
    assert decoded_amount == amount

    assert _transfers(logs, eure.address) == [(account, d.settlement_account, amount)]
    assert _transfers(logs, eure.mirror) == [(account, d.settlement_account, amount)]
    assert local_chain.balance_of("EURe", account) == before - amount
    assert local_chain.balance_of("EURe", d.settlement_account) == amount


def test_spend_logs_are_found_by_emitter_and_topic0(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    hashes = local_chain.spend_many([("EURe", i, 10**18 + i) for i in range(len(d.cardholders))])
    logs = local_chain.w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(d.spender_module),
            "topics": [REAL_SPEND_TOPIC0],
            "fromBlock": d.deployed_at_block,
            "toBlock": "latest",
        }
    )
    assert [log["transactionHash"].to_0x_hex() for log in logs] == hashes
    amounts = [
        abi_decode(["address", "address", "address", "uint256"], log["data"])[3] for log in logs
    ]
    assert amounts == [10**18 + i for i in range(len(d.cardholders))]


def test_six_decimal_token_spend(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    usdce = d.token("USDCe")
    assert usdce.decimals == 6
    token = local_chain.w3.eth.contract(
        address=Web3.to_checksum_address(usdce.address), abi=load_artifact("CardToken").abi
    )
    assert token.functions.decimals().call() == 6
    assert token.functions.symbol().call() == "USDCe"
    account = d.cardholders[1]
    before = local_chain.balance_of("USDCe", account)
    amount = 12_340_000  # 12.34 USDC.e

    tx_hash = local_chain.spend("USDCe", 1, amount)

    logs = _logs(local_chain, tx_hash)
    (spend_log,) = [log for log in logs if log["topics"][0] == REAL_SPEND_TOPIC0]
    decoded = abi_decode(
        ["address", "address", "address", "uint256"], bytes.fromhex(spend_log["data"][2:])
    )
    assert usdce.mirror is None
    assert Web3.to_checksum_address(decoded[0]) == usdce.address
    assert Web3.to_checksum_address(decoded[1]) == d.roles_modules[1]
    assert decoded[3] == amount
    assert _transfers(logs, usdce.address) == [(account, d.settlement_account, amount)]
    assert local_chain.balance_of("USDCe", account) == before - amount


# -- refunds --------------------------------------------------------------------------------


SAFE_MULTISIG_TX = "0x" + Web3.keccak(text="SafeMultiSigTransaction(address,uint256,bytes,uint8,"
                                     "uint256,uint256,uint256,address,address,bytes,bytes)").hex()
SAFE_EXECUTION_SUCCESS = "0x" + Web3.keccak(text="ExecutionSuccess(bytes32,uint256)").hex()


def _safe_logs(logs: list[dict[str, Any]], safe: str) -> list[str]:
    return [log["topics"][0] for log in logs if log["address"].lower() == safe.lower()]


def test_refund_is_a_plain_transfer_from_the_settlement_account(local_chain: LocalChain) -> None:
    """A refund is a Safe v1.3.0 transaction of the settlement account (its own
    SafeMultiSigTransaction and ExecutionSuccess logs, as on mainnet) whose only card trace is
    the token's Transfer from the settlement account."""
    d = local_chain.deployment
    eure = d.token("EURe")
    assert eure.mirror is not None
    local_chain.spend("EURe", 2, 42_240_000_000_000_000_000)

    tx_hash = local_chain.refund("EURe", 2, 2_350_000_000_000_000_000)

    logs = _logs(local_chain, tx_hash)
    leg = (d.settlement_account, d.cardholders[2], 2_350_000_000_000_000_000)
    assert _transfers(logs, eure.address) == [leg]
    assert _transfers(logs, eure.mirror) == [leg]
    # the Safe's logs around the v2 Transfer, then the v1 frontend's identical one
    assert [log["address"].lower() for log in logs] == [
        d.settlement_account.lower(), eure.address.lower(), eure.mirror.lower(),
        d.settlement_account.lower()]
    assert _safe_logs(logs, d.settlement_account) == [SAFE_MULTISIG_TX, SAFE_EXECUTION_SUCCESS]


def test_the_settlement_account_is_a_safe_v130_proxy_with_owners_and_a_threshold(
    local_chain: LocalChain,
) -> None:
    d = local_chain.deployment
    safe = local_chain.w3.eth.contract(address=Web3.to_checksum_address(d.settlement_account),
                                       abi=load_safe_artifact("GnosisSafeL2").abi)
    assert safe.functions.VERSION().call() == "1.3.0"
    assert safe.functions.getOwners().call() == [d.deployer]
    assert safe.functions.getThreshold().call() == 1
    singleton = local_chain.w3.eth.get_storage_at(safe.address, 0)[-20:]
    assert Web3.to_checksum_address(singleton) == SAFE_L2_SINGLETON
    # MultiSend's code holds its creation address (an immutable): compare the length only
    code = local_chain.w3.eth.get_code(Web3.to_checksum_address(MULTI_SEND))
    assert len(code) == len(bytes.fromhex(
        load_safe_artifact("MultiSend").deployed_bytecode.removeprefix("0x")))


def test_usdce_refund_is_a_single_transfer(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    usdce = d.token("USDCe").address
    local_chain.spend("USDCe", 1, 5_000_000)

    logs = _logs(local_chain, local_chain.refund("USDCe", 1, 1_250_000))

    assert [log["address"].lower() for log in logs] == [
        d.settlement_account.lower(), usdce.lower(), d.settlement_account.lower()]
    assert _transfers(logs, usdce) == [(d.settlement_account, d.cardholders[1], 1_250_000)]


def test_refund_batch_of_five_legs_is_one_tx_with_five_transfers(local_chain: LocalChain) -> None:
    d = local_chain.deployment
    eure = d.token("EURe").address
    mirror = d.token("EURe").mirror
    assert mirror is not None
    local_chain.spend_many([("EURe", i, 100 * 10**18) for i in range(5)])
    legs = [(d.cardholders[i], (i + 1) * 10**18) for i in range(5)]
    before = [local_chain.balance_of("EURe", holder) for holder, _ in legs]
    head = local_chain.w3.eth.block_number

    tx_hash = local_chain.refund_batch("EURe", legs)

    assert local_chain.w3.eth.block_number == head + 1
    receipt = local_chain.receipt(tx_hash)
    assert receipt["status"] == "0x1"
    token_logs = receipt["logs"][1:-1]  # between the Safe's two logs
    assert len(token_logs) == 10  # per leg: v2 Transfer, then v1 Transfer
    expected = [(d.settlement_account, holder, amount) for holder, amount in legs]
    assert _transfers(receipt["logs"], eure) == expected
    assert _transfers(receipt["logs"], mirror) == expected
    assert [log["address"].lower() for log in token_logs] == [eure.lower(), mirror.lower()] * 5
    assert _safe_logs(receipt["logs"], d.settlement_account) == [SAFE_MULTISIG_TX,
                                                                 SAFE_EXECUTION_SUCCESS]
    after = [local_chain.balance_of("EURe", holder) for holder, _ in legs]
    assert [a - b for a, b in zip(after, before, strict=True)] == [a for _, a in legs]
    assert local_chain.balance_of("EURe", d.settlement_account) == 500 * 10**18 - 15 * 10**18


# -- reverts --------------------------------------------------------------------------------


def test_a_spend_from_an_account_that_is_not_an_enabled_module_is_refused(
    local_chain: LocalChain,
) -> None:
    """Zodiac's moduleOnly: even the module's owner (the deployer) is refused, with
    the custom error NotAuthorized(sender), and nothing moves."""
    d = local_chain.deployment
    before = local_chain.balance_of("EURe", 0)

    for outsider in (local_chain.accounts[5], d.deployer):
        with pytest.raises(TransactionReverted) as info:
            local_chain.spend("EURe", 0, 10**18, sender=outsider)
        assert NOT_AUTHORIZED in str(info.value), str(info.value)
        assert outsider.lower()[2:] in str(info.value).lower()
    assert info.value.tx_hash.startswith("0x")
    assert local_chain.receipt(info.value.tx_hash)["status"] == "0x0"
    assert local_chain.balance_of("EURe", 0) == before
    assert local_chain.balance_of("EURe", d.settlement_account) == 0


def test_spend_above_the_balance_reverts_with_a_clear_error(local_chain: LocalChain) -> None:
    balance = local_chain.balance_of("USDCe", 3)

    with pytest.raises(TransactionReverted) as info:
        local_chain.spend("USDCe", 3, balance + 1)

    assert "transfer amount exceeds balance" in str(info.value)
    assert "spend" in str(info.value)
    assert local_chain.balance_of("USDCe", 3) == balance


def test_refund_batch_above_the_settlement_balance_reverts(local_chain: LocalChain) -> None:
    """A transfer that fails inside MultiSend fails the Safe transaction (safeTxGas 0:
    Safe's GS013), so nothing of the batch moves."""
    with pytest.raises(TransactionReverted, match="GS013"):
        local_chain.refund_batch("EURe", [(0, 1), (1, 1)])
    assert local_chain.balance_of("EURe", local_chain.deployment.settlement_account) == 0


def test_a_refund_batch_needs_as_many_owners_as_the_threshold(anvil_node: AnvilNode) -> None:
    """A settlement Safe of two owners and threshold 2 (as the real one has several): one
    owner alone is refused (GS020); with the other's approveHash first, the batch goes."""
    chain = LocalChain(anvil_node.rpc_url)
    owners = chain.accounts[8:10]
    d = chain.deploy(2, settlement_owners=owners, settlement_threshold=2)
    chain.spend("USDCe", 1, 5_000_000)
    with pytest.raises(TransactionReverted, match="GS020"):
        chain.refund_batch("USDCe", [(1, 1_000_000)], signers=owners[:1])
    requests = chain.refund_batch_requests("USDCe", [(1, 1_000_000)], signers=owners[::-1])
    assert [r["from"] for r in requests] == [owners[0], owners[1]]  # approve, then execute
    chain.refund_batch("USDCe", [(1, 1_000_000)], signers=owners[::-1])
    assert chain.balance_of("USDCe", d.settlement_account) == 4_000_000


# -- the Anvil harness ----------------------------------------------------------------------


def test_anvil_node_binds_localhost_and_stops(anvil_node: AnvilNode) -> None:
    assert anvil_node.rpc_url.startswith("http://127.0.0.1:")
    assert int(anvil_node.rpc("eth_chainId"), 16) == 31337
    pid = anvil_node.pid
    assert pid is not None and anvil_node.running
    anvil_node.stop()
    assert not anvil_node.running
    if sys.platform == "linux":
        assert not Path(f"/proc/{pid}").exists()


def test_anvil_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with AnvilNode(chain_id=100, state_path=state) as node:
        chain = LocalChain(node.rpc_url)
        deployment = chain.deploy(2)
        chain.spend("EURe", 0, 10**18)
    assert state.is_file()
    with AnvilNode(chain_id=100, state_path=state) as node:
        chain = LocalChain(node.rpc_url, deployment)
        assert chain.balance_of("EURe", deployment.settlement_account) == 10**18
        chain.spend("EURe", 1, 10**18)


def test_anvil_kill_leaves_no_process() -> None:
    node = AnvilNode().start()
    pid = node.pid
    node.kill()
    assert not node.running
    if sys.platform == "linux":
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists()

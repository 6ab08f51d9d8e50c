"""Fork mode's pure parts: the impersonation setting, the impersonated transaction's hash and
request, where new spends go on the `gnosis` preset, refunds matched only from the fork's own
blocks, and `cardpay run`'s fork options."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime

import pytest
from eth_abi.abi import encode as abi_encode

from cardpay.bootstrap.relayer import (
    SENTINEL_MODULES,
    RelayerNotConfigured,
    chain_targets,
    first_enabled_module,
)
from cardpay.cli.errors import UsageError
from cardpay.cli.run import fork_options
from cardpay.handlers.onchain import Call, Fees
from cardpay.onchain.sender import ImpersonatedSigner, impersonated_tx_hash
from cardpay.settings import Settings, SettingsError
from domain.commands import RecordSettlementTransfer
from listener.presets import GNOSIS
from listener.translate import translate
from tests.unit.test_listener_translate import CONFIG, TIME, transfer

pytestmark = pytest.mark.unit

RELAYER = "0x90830ed558f12d826370dc52e9d87947a7f18de9"
REQUEST = {"from": RELAYER, "to": "0x4822521e6135cd2599199c83ea35179229a172ee",
           "data": "0x1234", "value": "0x0", "nonce": "0x0", "gas": hex(100_000),
           "type": "0x2", "chainId": "0x64", "maxFeePerGas": hex(3 * 10**9),
           "maxPriorityFeePerGas": hex(10**9)}


def test_the_impersonated_hash_is_anvils() -> None:
    """Anvil 1.7.1 answered eth_sendTransaction of REQUEST with this hash (the integration test
    checks it against a running Anvil every time)."""
    assert impersonated_tx_hash(REQUEST) == \
        "0xa2892b4a763ae5486c4bd93b374c84440f6c6feb227c6119c901721ded4e6770"
    other = {**REQUEST, "nonce": "0x1"}
    assert impersonated_tx_hash(other) != impersonated_tx_hash(REQUEST)


def test_the_impersonated_signer_records_the_request_it_sends() -> None:
    signer = ImpersonatedSigner(RELAYER.upper().replace("0X", "0x"))
    tx = signer.sign(chain_id=100, nonce=7, call=Call("0xAB" + "cd" * 19, "8a320255"),
                     gas=300_000, fees=Fees(2 * 10**9, 10**9), signed_at=datetime.now(UTC))
    request = json.loads(tx.raw)
    assert request["from"] == RELAYER == tx.sender
    assert request["nonce"] == "0x7" and request["chainId"] == "0x64"
    assert request["to"] == "0xab" + "cd" * 19 and request["data"] == "0x8a320255"
    assert tx.tx_hash == impersonated_tx_hash(request)


def test_the_signer_setting() -> None:
    assert not Settings.from_env({}).impersonate
    on = Settings.from_env({"CARDPAY_TX_SIGNER": "impersonate",
                            "CARDPAY_RELAYER_ADDRESS": "0x" + "Ab" * 20})
    assert on.impersonate and on.sends_spends and on.sends_refunds
    assert on.relayer_address == "0x" + "ab" * 20 and on.settlement_sender is None
    assert not Settings.from_env({}).sends_spends
    with pytest.raises(SettingsError, match="CARDPAY_TX_SIGNER"):
        Settings.from_env({"CARDPAY_TX_SIGNER": "ledger"})
    with pytest.raises(SettingsError, match="CARDPAY_SETTLEMENT_SENDER"):
        Settings.from_env({"CARDPAY_SETTLEMENT_SENDER": "0x1234"})


def test_new_spends_go_through_the_gnosis_presets_current_module() -> None:
    targets = chain_targets(GNOSIS)
    assert targets.spender_module == "0x5f07734e2b9c4de6f9c32253d485741800da3f8a"
    assert targets.token("EURe", 18) == "0xcb444e90d8198415266c6a2724b7900fb12fc56e"  # v1
    assert targets.token("USDCe", 6) == "0x2a22f9c3b484c3629090feed35f17ff8f88f76f0"
    assert GNOSIS.relayer == RELAYER


def test_refunds_are_matched_only_from_the_forks_own_blocks() -> None:
    logs = [transfer(next(iter(CONFIG.mirrors.values())), CONFIG.settlement, "0x" + "5a" * 20,
                     10**18, block=block, tx_no=block) for block in (9, 10, 11)]
    times = {9: TIME, 10: TIME, 11: TIME}
    matched = translate(logs, dataclasses.replace(CONFIG, refunds_matched_from=10), times)
    blocks = [c.evidence.block_number for c in matched.commands
              if isinstance(c, RecordSettlementTransfer)]
    assert blocks == [10, 11]
    assert len(matched.activity) == 3  # every one is still observed


def _args(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {"fork_url": None, "fork_block": None, "from_block": None,
                               "cards_from": None}
    return argparse.Namespace(**{**base, **given})


def test_run_fork_options() -> None:
    assert fork_options(_args()) is None
    assert fork_options(_args(fork_url="http://x", fork_block=5)) == {
        "url": "http://x", "block": 5, "from_block": None, "cards_from": None}
    with pytest.raises(UsageError, match="--fork-block needs --fork-url"):
        fork_options(_args(fork_block=5))
    with pytest.raises(UsageError, match="--from-block must be >= 0"):
        fork_options(_args(fork_url="http://x", from_block=-1))


class ModulesNode:
    """Answers `getModulesPaginated` with `answer` (and checks the call is that one)."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def call(self, to: str, data: str) -> str:
        assert data == "0xcc2f8452" + abi_encode(["address", "uint256"],
                                                 [SENTINEL_MODULES, 10]).hex()
        return self.answer


def test_the_first_enabled_module_is_read_with_zodiacs_abi_and_a_bad_answer_is_one_line() -> None:
    """getModulesPaginated(SENTINEL, 10) -> (address[] array, address next); the first module,
    lowercase; no module, or an answer that is not that ABI (an address without code says
    "0x"), is RelayerNotConfigured naming CARDPAY_RELAYER_ADDRESS."""
    a, b = "0x" + "ab" * 20, "0x" + "cd" * 20
    spender = "0x" + "11" * 20

    def page(modules: list[str]) -> str:
        return "0x" + abi_encode(["address[]", "address"], [modules, SENTINEL_MODULES]).hex()

    assert first_enabled_module(ModulesNode(page([a, b])), spender) == a  # type: ignore[arg-type]
    for answer, says in [(page([]), "has no enabled module"), ("0x", "does not list"),
                         ("0x" + "00" * 31, "does not list"), ("0x" + "ff" * 96, "does not list")]:
        with pytest.raises(RelayerNotConfigured, match=says) as raised:
            first_enabled_module(ModulesNode(answer), spender)  # type: ignore[arg-type]
        assert "CARDPAY_RELAYER_ADDRESS" in str(raised.value)

"""The pure parts of the on-chain adapters: the two calls' ABI encoding (checked against
eth_abi), fee bumps for replacements, where spends and refunds go, and the keys as settings
(never shown)."""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi.abi import decode, encode
from web3 import Web3

from cardpay.bootstrap.relayer import RelayerNotConfigured, chain_targets
from cardpay.handlers.onchain import (
    DELEGATECALL,
    EXEC_TRANSACTION_SELECTOR,
    MULTI_SEND,
    MULTI_SEND_SELECTOR,
    SPEND_SELECTOR,
    SPENDING_ROLE,
    TRANSFER_SELECTOR,
    Fees,
    encode_refund_batch,
    encode_spend,
)
from cardpay.onchain.sender import LocalSigner, _decode_error
from cardpay.settings import Secret, Settings, SettingsError
from listener.presets import GNOSIS, local_config

pytestmark = pytest.mark.unit

A, B, C, D = ("0x" + c * 40 for c in "abcd")
KEY = "0x" + "4c" * 32


def test_the_selectors_are_the_contracts_functions() -> None:
    assert SPEND_SELECTOR == "8a320255"  # mainnet's Spender module (gnosis-pay-onchain.md §3)
    assert Web3.keccak(text="spend(address,address,address,uint256,bytes32)")[:4].hex() == \
        SPEND_SELECTOR
    assert Web3.keccak(text="SPENDING_ROLE").hex() == SPENDING_ROLE.removeprefix("0x")
    safe_exec = ("execTransaction(address,uint256,bytes,uint8,uint256,uint256,uint256,address,"
                 "address,bytes)")
    assert Web3.keccak(text=safe_exec)[:4].hex() == EXEC_TRANSACTION_SELECTOR
    assert Web3.keccak(text="multiSend(bytes)")[:4].hex() == MULTI_SEND_SELECTOR
    assert Web3.keccak(text="transfer(address,uint256)")[:4].hex() == TRANSFER_SELECTOR


def test_spend_and_refund_batch_encode_as_eth_abi_does() -> None:
    role = bytes.fromhex(SPENDING_ROLE.removeprefix("0x"))
    assert encode_spend(A, B, C, 12345, SPENDING_ROLE) == SPEND_SELECTOR + encode(
        ["address", "address", "address", "uint256", "bytes32"], [A, B, C, 12345, role]).hex()
    legs = [(B, 1), (C, 2**200), (D, 3)]
    transfers = b"".join(
        bytes(1) + bytes.fromhex(A[2:]) + (0).to_bytes(32, "big") + (68).to_bytes(32, "big")
        + bytes.fromhex(TRANSFER_SELECTOR) + encode(["address", "uint256"], [to, amount])
        for to, amount in legs)
    multi_send = bytes.fromhex(MULTI_SEND_SELECTOR) + encode(["bytes"], [transfers])
    zero = "0x" + "0" * 40

    def execute(*owners: str) -> str:
        signatures = b"".join(encode(["address", "uint256"], [o, 0]) + b"\x01" for o in owners)
        return EXEC_TRANSACTION_SELECTOR + encode(
            ["address", "uint256", "bytes", "uint8", "uint256", "uint256", "uint256", "address",
             "address", "bytes"],
            [MULTI_SEND, 0, multi_send, DELEGATECALL, 0, 0, 0, zero, zero, signatures]).hex()

    assert encode_refund_batch(A, legs, [D]) == execute(D)
    # a Safe takes its owners' signatures in ascending order of address, each once
    assert encode_refund_batch(A, legs, [D, B, D.upper().replace("0X", "0x")]) == execute(B, D)
    with pytest.raises(ValueError):
        encode_refund_batch(A, legs, [])
    with pytest.raises(ValueError):
        encode_spend(A, B, C, -1, SPENDING_ROLE)
    with pytest.raises(ValueError):
        encode_spend("0x12", B, C, 1, SPENDING_ROLE)
    with pytest.raises(ValueError):
        encode_spend(A, B, C, 1, "0x1234")


def test_the_spend_calldata_decodes_as_mainnets_five_argument_abi() -> None:
    """What cardpay sends is what mainnet's Spender module parses: spend(asset, account,
    receiver, amount, roleKey), decoded here with eth-abi from the mainnet signature."""
    data = bytes.fromhex(encode_spend(A, B, C, 8_500_000_000_000_000_000, SPENDING_ROLE))
    assert data[:4].hex() == "8a320255"
    assert len(data) == 4 + 5 * 32  # no appended salt or signature
    asset, account, receiver, amount, role = decode(
        ["address", "address", "address", "uint256", "bytes32"], data[4:])
    assert (asset, account, receiver) == (A, B, C)
    assert amount == 8_500_000_000_000_000_000
    assert "0x" + role.hex() == SPENDING_ROLE


def test_a_replacement_pays_at_least_an_eighth_more_and_what_the_node_asks() -> None:
    old = Fees(max_fee=1000, priority_fee=100)
    assert old.bumped(Fees(1, 1)) == Fees(1126, 113)
    assert old.bumped(Fees(5000, 500)) == Fees(5000, 500)


def test_spends_and_refunds_go_through_a_tokens_v1_frontend() -> None:
    deployment = {"chain_id": 31337, "settlement_account": A, "spender_module": B,
                  "tokens": {"EURe": {"address": C, "decimals": 18, "mirror": D},
                             "USDCe": {"address": A, "decimals": 6}}}
    targets = chain_targets(local_config(deployment))
    assert (targets.spender_module, targets.settlement_account) == (B, A)
    assert targets.token("EURe", 18) == D
    assert targets.token("USDCe", 6) == A
    with pytest.raises(ValueError, match="decimals"):
        targets.token("USDCe", 18)
    with pytest.raises(ValueError, match="no token"):
        targets.token("GBPe", 18)
    with pytest.raises(RelayerNotConfigured):  # two Spender modules, none named for new spends
        chain_targets(dataclasses.replace(GNOSIS, spend_module=None))


def test_keys_are_read_as_secrets_and_never_shown() -> None:
    settings = Settings.from_env({"CARDPAY_RELAYER_KEY": KEY.upper().replace("0X", "0x"),
                                  "CARDPAY_SETTLEMENT_KEY": KEY.removeprefix("0x"),
                                  "CARDPAY_TX_STUCK_AFTER": "90s"})
    assert settings.relayer_key == settings.settlement_key == Secret(KEY)
    assert settings.relayer_key is not None and settings.relayer_key.reveal() == KEY
    assert settings.tx_stuck_after.total_seconds() == 90
    body = KEY.removeprefix("0x")
    for shown in (repr(settings), str(settings.relayer_key), f"{settings.relayer_key}",
                  repr(LocalSigner(Secret(KEY)))):
        assert body not in shown.lower()
    assert Settings.from_env({}).relayer_key is None


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "0x" + "4c" * 33])
def test_a_malformed_key_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"CARDPAY_RELAYER_KEY": bad})
    assert "CARDPAY_RELAYER_KEY" in str(error.value)
    assert bad not in str(error.value) and bad.removeprefix("0x") not in str(error.value)


def test_a_revert_string_is_decoded_from_a_trace_output() -> None:
    output = "0x08c379a0" + encode(["string"], ["RolesModule: too much"]).hex()
    assert _decode_error(output) == "RolesModule: too much"
    assert _decode_error("0x") is None

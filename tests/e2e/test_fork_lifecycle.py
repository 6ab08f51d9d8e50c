"""The whole card-payment lifecycle on an Anvil fork of the stand-in for Gnosis Chain, with the
`gnosis` preset: the contracts at the mainnet addresses, chain id 100, and no key of ours — the
spend relayer sends mainnet's `spend` call as the Spender module's first enabled module (read
from the fork; an address cardpay is not told) and the refund sender as the settlement Safe's
first owner (read with getOwners; the Safe's threshold of 2 set to 1 on the fork), both through
`anvil_impersonateAccount` (CARDPAY_TX_SIGNER=impersonate): refunds are the Safe's
`execTransaction` delegatecalling MultiSend, as on mainnet.
The simulator's workload ends with chain = ledger = read models = settlement report, as on a
plain Anvil (tests/e2e/test_lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardpay.bootstrap.lifecycle import ForkSource, lifecycle_stack, run_lifecycle
from cardpay.bootstrap.relayer import SAFE_THRESHOLD_SLOT
from cardpay.devstack.gnosis_standin import (
    SETTLEMENT_OWNER,
    SETTLEMENT_THRESHOLD,
    SPENDER_DELEGATE,
    gnosis_standin,
)
from cardpay.handlers.onchain import EXEC_TRANSACTION_SELECTOR
from cardpay.settings import Settings
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC
from tests.support.lifecycle import CALM_DEADLINE_MS, assert_everything_agrees

pytestmark = pytest.mark.e2e


def test_the_lifecycle_on_a_fork_agrees_everywhere_with_impersonated_senders(
        pg_url: str, tmp_path: Path) -> None:
    payments = 40
    settings = Settings(database_url=pg_url, data_dir=tmp_path,
                        authorization_deadline_ms=CALM_DEADLINE_MS)
    with gnosis_standin(cardholders=8) as standin:
        fork_block = standin.fork_block
        source = ForkSource(standin.rpc_url, standin.deployment, fork_block)
        with lifecycle_stack(settings, cardholders=8, fork=source) as s:
            assert s.settings.relayer_key is None and s.settings.settlement_key is None
            assert s.config.chain_id == 100 and s.deployment.deployed_at_block > fork_block
            result = run_lifecycle(s, payments, seed=5, duplicates=0.1, reorder=0.2,
                                   timeout=300)
            w3 = s.chain.w3
            span = {"fromBlock": fork_block + 1, "toBlock": "latest"}
            spends = w3.eth.get_logs({**span, "address": s.deployment.spender_module,  # type: ignore[typeddict-item]
                                      "topics": [SPEND_TOPIC]})
            senders = {str(w3.eth.get_transaction(e["transactionHash"])["from"]).lower()
                       for e in spends}
            settlement = "0x" + "00" * 12 + s.deployment.settlement_account.lower()[2:]
            refunds = w3.eth.get_logs({**span, "topics": [TRANSFER_TOPIC, settlement]})  # type: ignore[typeddict-item]
            refund_txs = [w3.eth.get_transaction(e["transactionHash"]) for e in refunds]
            refund_senders = {str(tx["from"]).lower() for tx in refund_txs}
            refund_calls = {(str(tx["to"]).lower(), bytes(tx["input"])[:4].hex())
                            for tx in refund_txs}
            thresholds = [int(chain.eth.get_storage_at(s.deployment.settlement_account,
                                                       SAFE_THRESHOLD_SLOT).hex(), 16)
                          for chain in (w3, standin.chain.w3)]
    assert_everything_agrees(result, min_spent=3)
    assert spends and senders == {SPENDER_DELEGATE}
    assert refunds and refund_senders == {SETTLEMENT_OWNER}
    assert refund_calls == {(s.deployment.settlement_account.lower(), EXEC_TRANSACTION_SELECTOR)}
    assert thresholds == [1, SETTLEMENT_THRESHOLD]  # the fork's, the upstream's

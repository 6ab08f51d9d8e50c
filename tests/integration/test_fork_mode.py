"""Fork mode on two real Anvils: the stand-in for Gnosis Chain (chain 100, the replicas at the
`gnosis` preset's addresses, a history) and a fork of it, indexed with the `gnosis` preset."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine
from web3 import Web3
from web3.types import RPCEndpoint

from cardpay.bootstrap.lifecycle import fork_config
from cardpay.bootstrap.listen import check_chain
from cardpay.bootstrap.relayer import (
    SENTINEL_MODULES,
    RelayerNotConfigured,
    first_enabled_module,
    one_owner_signs,
    settlement_sender_address,
    spend_sender_address,
)
from cardpay.devstack.artifacts import load_artifact, load_safe_artifact
from cardpay.devstack.gnosis_standin import (
    GNOSIS_PAY_RELAYER,
    NEW_SPENDER_MODULE,
    OLD_SPENDER_MODULE,
    SETTLEMENT_OWNER,
    SETTLEMENT_THRESHOLD,
    SPENDER_DELEGATE,
    StandIn,
    card_token,
    fork_of,
    gnosis_standin,
    impersonate,
    settlement_signers,
    with_fees,
)
from cardpay.devstack.local_chain import LocalChain, TransactionReverted
from cardpay.handlers.onchain import Call, Fees, Receipt, encode_refund_batch
from cardpay.onchain.sender import ImpersonatedSigner, ImpersonatingNode, RpcNode
from cardpay.postgres.chain_identity import PostgresChainIdentities
from cardpay.postgres.engine import make_engine
from cardpay.settings import Settings
from listener.poller import RangeResult
from listener.presets import GNOSIS
from listener.rpc import HttpJsonRpc
from tests.support.indexing import canonical_views, make_listener, project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    """One stand-in for the module: every test forks it and leaves it as it was (a test that
    writes to it directly makes its own)."""
    with gnosis_standin() as made:
        yield made


def _views(engine: Engine) -> tuple[list[Any], list[Any]]:
    """The canonical views without what differs between two chains that carry the same
    transactions in blocks of their own: block hashes and times."""
    payments, activity = canonical_views(engine)
    return payments, [(r[0], *r[2:4], *r[5:]) for r in activity]


def _index(engine: Engine, url: str, *, seen: list[RangeResult] | None = None) -> None:
    make_listener(engine, url, GNOSIS, 1, seen=seen, max_range=25).run_until_caught_up()
    project(engine)


def test_the_standin_holds_the_replicas_at_the_mainnet_addresses(standin: StandIn) -> None:
    d = standin.deployment
    assert standin.node.rpc("eth_chainId") == "0x64"
    assert d.token("EURe").address.lower() == "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
    assert d.token("EURe").mirror.lower() == "0xcb444e90d8198415266c6a2724b7900fb12fc56e"  # type: ignore[union-attr]
    assert d.token("USDCe").address.lower() == "0x2a22f9c3b484c3629090feed35f17ff8f88f76f0"
    assert d.settlement_account.lower() == GNOSIS.settlement
    assert {d.spender_module.lower(), OLD_SPENDER_MODULE.lower()} == GNOSIS.spender_modules
    # the v1 frontend reads the v2 token's balances (its controller is the moved v2 token)
    frontend = standin.chain.w3.eth.contract(address=Web3.to_checksum_address(d.token("EURe").mirror or ""),
                                             abi=load_artifact("TokenFrontend").abi)
    assert frontend.functions.balanceOf(d.cardholders[0]).call() == \
        standin.chain.balance_of("EURe", 0) > 0


def test_impersonated_hash_is_known_before_sending(standin: StandIn) -> None:
    """The hash recorded before a transaction is sent is the one Anvil gives it."""
    with fork_of(standin.rpc_url, standin.fork_block) as fork:
        node = ImpersonatingNode(HttpJsonRpc(fork.rpc_url, retries=0))
        signer = ImpersonatedSigner(SPENDER_DELEGATE)  # the new Spender module's module
        chain = LocalChain(fork.rpc_url, standin.deployment)
        request = chain.spend_request("EURe", 0, 10**18)
        call = Call(request["to"], request["data"].removeprefix("0x"))
        nonce = node.nonce(signer.address, pending=True)
        fees = node.fees()
        tx = signer.sign(chain_id=node.chain_id(), nonce=nonce, call=call, gas=300_000,
                         fees=fees, signed_at=datetime.now(UTC))
        node.send_raw(tx.raw)
        receipt = _receipt(node, tx.tx_hash)
        assert receipt is not None and receipt.succeeded
        assert fork.rpc("eth_getTransactionByHash", [tx.tx_hash])["from"] == SPENDER_DELEGATE
        node.send_raw(tx.raw)  # a rebroadcast of a mined one is not an error
        replaced = signer.sign(chain_id=100, nonce=nonce + 1, call=call, gas=300_000,
                               fees=Fees(fees.max_fee * 2, fees.priority_fee), signed_at=tx.signed_at)
        assert replaced.tx_hash != tx.tx_hash


def test_on_the_fork_spends_are_sent_as_the_spender_modules_first_enabled_module(
    standin: StandIn,
) -> None:
    """With no CARDPAY_RELAYER_ADDRESS the spend relayer impersonates the module the Spender
    module lists first (getModulesPaginated), an address cardpay knows nothing of; the preset's
    relayer EOA is not one of the new module's, and its spend is refused (NotAuthorized). With
    the list empty, one clear line says so."""
    assert SPENDER_DELEGATE not in {GNOSIS.relayer, GNOSIS.settlement, *GNOSIS.spender_modules}
    impersonating = Settings(tx_signer="impersonate")
    with fork_of(standin.rpc_url, standin.fork_block) as fork:
        node = RpcNode(HttpJsonRpc(fork.rpc_url, retries=0))
        assert first_enabled_module(node, NEW_SPENDER_MODULE) == SPENDER_DELEGATE
        assert first_enabled_module(node, OLD_SPENDER_MODULE) == GNOSIS_PAY_RELAYER
        assert spend_sender_address(impersonating, fork_config(), node) == SPENDER_DELEGATE
        override = Settings(tx_signer="impersonate", relayer_address="0x" + "ab" * 20)
        assert spend_sender_address(override, fork_config(), node) == "0x" + "ab" * 20

        chain = LocalChain(fork.rpc_url, standin.deployment)
        impersonate(fork.rpc, GNOSIS_PAY_RELAYER)
        request = chain.spend_request("EURe", 0, 10**18, sender=GNOSIS_PAY_RELAYER)
        with pytest.raises(TransactionReverted, match="4a0bfec1"):  # NotAuthorized(address)
            chain.transact("a spend from the preset's relayer", request)
        impersonate(fork.rpc, SPENDER_DELEGATE)
        chain.transact("a spend from the looked-up module", chain.spend_request("EURe", 0, 10**18))

        spender = chain.w3.eth.contract(abi=load_artifact("SpenderModule").abi)
        chain.transact("disable the only module", {
            "from": standin.deployment.deployer, "to": NEW_SPENDER_MODULE, "gas": hex(100_000),
            "data": spender.encode_abi("disableModule",
                                       args=[SENTINEL_MODULES, Web3.to_checksum_address(
                                           SPENDER_DELEGATE)])})
        with pytest.raises(RelayerNotConfigured) as info:
            spend_sender_address(impersonating, fork_config(), node)
        message = str(info.value)
        assert "no enabled module" in message and "CARDPAY_RELAYER_ADDRESS" in message
        assert "\n" not in message
        with pytest.raises(RelayerNotConfigured, match="does not list its modules"):
            first_enabled_module(node, standin.deployment.token("USDCe").address)  # a token


def test_on_the_fork_refunds_are_sent_as_the_settlement_safes_first_owner(
    standin: StandIn,
) -> None:
    """The settlement account is a Safe v1.3.0 of 2 owners, threshold 2. On a fork the refund
    sender impersonates its first owner (getOwners; an address cardpay knows nothing of), sets
    the fork's threshold to 1 (the stand-in keeps 2), and cardpay's own execTransaction →
    MultiSend call moves the tokens. A CARDPAY_SETTLEMENT_SENDER that is no owner, or a
    settlement account that is no Safe, is one clear line."""
    d = standin.deployment
    assert SETTLEMENT_OWNER not in {GNOSIS.relayer, GNOSIS.settlement, *GNOSIS.spender_modules}
    safe_abi = load_safe_artifact("GnosisSafeL2").abi
    impersonating = Settings(tx_signer="impersonate")
    with fork_of(standin.rpc_url, standin.fork_block) as fork:
        node = ImpersonatingNode(HttpJsonRpc(fork.rpc_url, retries=0))
        sender = settlement_sender_address(impersonating, fork_config(), node)
        assert sender == SETTLEMENT_OWNER
        assert one_owner_signs(node, GNOSIS.settlement) == SETTLEMENT_THRESHOLD
        assert one_owner_signs(node, GNOSIS.settlement) == 1  # done once
        chain = LocalChain(fork.rpc_url, d)
        for w3, threshold in ((chain.w3, 1), (standin.chain.w3, SETTLEMENT_THRESHOLD)):
            safe = w3.eth.contract(address=Web3.to_checksum_address(GNOSIS.settlement),
                                   abi=safe_abi)
            assert safe.functions.getThreshold().call() == threshold

        token = d.token("USDCe").spend_address
        before = chain.balance_of("USDCe", 1)
        call = encode_refund_batch(token, [(d.cardholders[1], 1_000), (d.cardholders[3], 2_000)],
                                   [sender])
        impersonate(fork.rpc, sender)
        chain.transact("cardpay's refund batch", {"from": sender, "to": d.settlement_account,
                                                  "data": "0x" + call, "gas": hex(300_000)})
        assert chain.balance_of("USDCe", 1) == before + 1_000

        stranger = Settings(tx_signer="impersonate", settlement_sender="0x" + "ab" * 20)
        with pytest.raises(RelayerNotConfigured, match="is not an owner") as info:
            settlement_sender_address(stranger, fork_config(), node)
        assert "\n" not in str(info.value)
        owner = Settings(tx_signer="impersonate", settlement_sender=d.deployer)
        assert settlement_sender_address(owner, fork_config(), node) == d.deployer.lower()
        not_a_safe = dataclasses.replace(fork_config(), settlement=NEW_SPENDER_MODULE)
        with pytest.raises(RelayerNotConfigured, match=r"does not answer as a Safe does \(getOwners"):
            settlement_sender_address(impersonating, not_a_safe, node)


def _receipt(node: ImpersonatingNode, tx_hash: str) -> Receipt | None:
    deadline = time.monotonic() + 10
    while (found := node.receipt(tx_hash)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _post_fork_work(standin: StandIn, urls: list[str], step: int) -> list[str]:
    """The same spends and refunds on every node in `urls` (the stand-in and a fork of it), with
    fixed fees, so each has the same hash everywhere (asserted)."""
    d = standin.deployment
    chain = LocalChain(urls[0], d)
    hashes = []
    for url in urls:  # a fork does not inherit its upstream's impersonations
        LocalChain(url, d).w3.provider.make_request(
            RPCEndpoint("anvil_impersonateAccount"), [Web3.to_checksum_address(SETTLEMENT_OWNER)])

    def send(action: str, tx: dict[str, Any]) -> None:
        sent = {LocalChain(url, d).transact(action, with_fees(tx)) for url in urls}
        assert len(sent) == 1, f"{action} has different hashes on the two nodes: {sent}"
        hashes.extend(sent)

    for i in range(len(d.cardholders)):
        symbol = card_token(i)
        amount = (step * 10 + i + 1) * 10 ** (d.token(symbol).decimals - 1)
        send(f"spend {step}/{i}", chain.spend_request(symbol, i, amount))
        if i % 3 == 0:  # the settlement Safe's approveHash, then its execTransaction
            for n, tx in enumerate(chain.refund_batch_requests(
                    symbol, [(i, amount // 3)], signers=settlement_signers(chain))):
                send(f"refund {step}/{i}/{n}", tx)
    return hashes


def test_backfill_across_the_fork_block_and_live_after_it_equal_the_standin(
    make_db: Callable[[], str],
) -> None:
    """History up to the fork block comes from the stand-in through the fork; the fork's own
    blocks after it carry the same transactions as the stand-in's: an index of the fork
    (backfill across the fork block, then live) equals an index of the stand-in."""
    with gnosis_standin() as standin:
        fork_block = standin.fork_block
        with fork_of(standin.rpc_url, fork_block) as fork:
            impersonate(fork.rpc, SPENDER_DELEGATE)
            urls = [standin.rpc_url, fork.rpc_url]
            _post_fork_work(standin, urls, 1)
            on_fork = make_engine(make_db())
            direct = make_engine(make_db())
            try:
                identity = check_chain(HttpJsonRpc(fork.rpc_url, retries=0), fork.rpc_url, GNOSIS,
                                       PostgresChainIdentities(on_fork), "test", first_block=1)
                assert identity.chain_id == 100
                seen: list[RangeResult] = []
                _index(on_fork, fork.rpc_url, seen=seen)  # the backfill, across the fork block
                assert seen[0].from_block <= fork_block < seen[-1].to_block
                backfilled = _views(on_fork)
                assert len(backfilled[0]) == standin.history.spends + len(standin.deployment.cardholders)
                _post_fork_work(standin, urls, 2)
                _index(on_fork, fork.rpc_url, seen=seen)  # live: the fork's new blocks only
                assert seen[-1].from_block > fork_block
                _index(direct, standin.rpc_url)
                assert _views(on_fork) == _views(direct)
                payments = _views(on_fork)[0]
                assert len(payments) == standin.history.spends + 2 * len(standin.deployment.cardholders)
                spent = {c: sum(int(p[4]) for p in payments if p[2] == c) for c in ("EURe", "USDCe")}
                assert spent["EURe"] > standin.history.spent["EURe"]
            finally:
                on_fork.dispose()
                direct.dispose()


def test_a_reorg_on_the_fork_is_handled_as_on_a_plain_anvil(
    standin: StandIn, pg_engine: Engine, make_db: Callable[[], str],
) -> None:
    """anvil_reorg on the fork (above the fork block): the index that lived through it equals
    a fresh index of the fork as it is now, history included."""
    d = standin.deployment
    depth = 3
    with fork_of(standin.rpc_url, standin.fork_block) as fork:
        impersonate(fork.rpc, SPENDER_DELEGATE)
        chain = LocalChain(fork.rpc_url, d)
        txs = [chain.transact(f"spend {i}", chain.spend_request(card_token(i), i, (i + 1) * 10**5))
               for i in range(depth + 2)]
        seen: list[RangeResult] = []
        listener = make_listener(pg_engine, fork.rpc_url, GNOSIS, 1, seen=seen, max_range=25)
        listener.run_until_caught_up()
        project(pg_engine)
        before = _views(pg_engine)[0]
        assert {p[6] for p in before} >= {t.lower() for t in txs}

        replacement = [[chain.spend_request("USDCe", 3, 777_000), 0]]
        fork.rpc("anvil_reorg", [depth, replacement])
        fork.rpc("anvil_mine", ["0x1"])
        listener.run_until_caught_up()
        project(pg_engine)

        assert [r.reorg_depth for r in seen if r.reorg_depth] == [depth]
        fresh = make_engine(make_db())
        try:
            _index(fresh, fork.rpc_url)
            assert _views(pg_engine) == _views(fresh)
        finally:
            fresh.dispose()
        after = {p[6]: p for p in _views(pg_engine)[0]}
        assert not {t.lower() for t in txs[-depth:]} & set(after)
        assert [p for p in after.values() if int(p[4]) == 777_000]

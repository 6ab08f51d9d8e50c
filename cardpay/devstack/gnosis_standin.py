"""A local stand-in for Gnosis Chain, and an Anvil fork of it, as a user forks the real chain.

No Gnosis node is reachable from the machines cardpay is built and tested on, so fork mode is
tested against this: an Anvil with chain id 100 whose replicas (contracts/) sit at the `gnosis`
preset's mainnet addresses — EURe v2 ``0x420C…3430`` with its v1 frontend ``0xcB44…C56E``,
USDC.e ``0x2a22…76F0``, the settlement account ``0x4822…72EE``, the Spender module of
2023-12 → 2026-06 ``0xcFF2…549b`` and its successor ``0x5f07…3F8a`` — and a history made on
them: card spends through the old module, the "migration" (the old module loses its role),
spends through the new one, batched refunds and a top-up.

The settlement account is Safe v1.3.0 itself (a proxy of the GnosisSafeL2 singleton, both at
their mainnet addresses, with MultiSend at its canonical one), with two owners and a threshold
of 2, as the real one has several: the history's refund batches are approved by one owner
(`approveHash`) and executed by the other through MultiSend. Its first owner,
`SETTLEMENT_OWNER`, is an address cardpay knows nothing of; on a fork cardpay finds it
(`getOwners`), impersonates it and sets the threshold to 1, as it would on a fork of mainnet.

Who may spend: the Spender modules take `spend` only from their enabled modules (Zodiac's
`moduleOnly`), as on mainnet. The old module's is Gnosis Pay's relayer EOA (``0x9083…8de9``);
the new module's is `SPENDER_DELEGATE`, an address cardpay knows nothing of — not the preset's,
not a setting — as mainnet's is to cardpay, so a fork of the stand-in shows the spend relayer
finding whom to impersonate from the chain (`getModulesPaginated`). Both are impersonated on
the stand-in to make the history.

A second Anvil forks it (``--fork-url``, ``--fork-block-number``): what happened up to the fork
block is served by the stand-in, through the fork, exactly as the real chain's history is when a
user forks Gnosis Chain. The spend call is mainnet's (`spend(asset, account, receiver, amount,
roleKey)`, from an enabled module), and so is the refund's (the Safe's `execTransaction`
delegatecalling MultiSend); contracts/README.md, "Differences from mainnet", lists what is not.
Their logs and addresses are mainnet's.

Typical use::

    with gnosis_standin() as upstream, fork_of(upstream.rpc_url, upstream.fork_block) as fork:
        ...  # fork.rpc_url: chain 100, the history below, new blocks of its own

``python -m cardpay.devstack.gnosis_standin`` starts one and prints its URL and head block, for
trying ``cardpay run --fork-url`` without a Gnosis Chain RPC URL (README, "Fork mode").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.artifacts import load_artifact
from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from cardpay.handlers.onchain import SPENDING_ROLE
from listener.presets import EURE_V1, EURE_V2, GNOSIS, USDCE

GNOSIS_CHAIN_ID = 100
OLD_SPENDER_MODULE = "0xcFF260bfbc199dC82717494299b1AcADe25F549b"
"""Gnosis Pay's global Spender module until 2026-06-04 (gnosis-pay-onchain.md §2)."""
NEW_SPENDER_MODULE = "0x5f07734E2B9C4dE6f9C32253d485741800da3F8a"
"""Its successor, from 2026-06-04: where new spends go (`ChainConfig.spend_module`)."""
GNOSIS_PAY_RELAYER = "0x90830ed558f12d826370dc52e9d87947a7f18de9"
"""The EOA that sends every card spend on mainnet (the tx.from of the recorded spends); here
the old Spender module's enabled module, which sends the history's spends through it."""
SPENDER_DELEGATE = "0x" + Web3.keccak(text="cardpay stand-in: the Spender module's delegate"
                                      ).hex().removeprefix("0x")[-40:]
"""The new Spender module's only enabled module on the stand-in: an address no preset or
setting of cardpay names (lowercase hex), found on a fork by reading the module's list."""
SETTLEMENT_OWNER = "0x" + Web3.keccak(text="cardpay stand-in: an owner of the settlement Safe"
                                      ).hex().removeprefix("0x")[-40:]
"""The settlement Safe's first owner on the stand-in (lowercase hex): named by no preset or
setting of cardpay, found on a fork with `getOwners`. Its other owner is the deployer."""
SETTLEMENT_THRESHOLD = 2
GNOSIS_ADDRESSES: Mapping[str, str] = {
    "EURe": EURE_V2, "EURe.v1": EURE_V1, "USDCe": USDCE,
    "settlement": GNOSIS.settlement, "spender": NEW_SPENDER_MODULE,
}
"""Where `LocalChain.deploy(at=...)` puts each replica on the stand-in."""
FEES = {"maxFeePerGas": hex(50 * 10**9), "maxPriorityFeePerGas": hex(10**9)}
"""Fixed fees for the history: the same transaction sent to two nodes (the stand-in and a fork)
then has the same hash on both."""
_GAS_FUNDS = hex(10**24)


@dataclass(frozen=True)
class History:
    """What the stand-in's history did, per token (base units), to check an index against."""

    spends: int
    spent: Mapping[str, int]
    refunded: Mapping[str, int]


@dataclass(frozen=True)
class StandIn:
    node: AnvilNode
    chain: LocalChain
    deployment: LocalDeployment
    history: History

    @property
    def rpc_url(self) -> str:
        return self.node.rpc_url

    @property
    def fork_block(self) -> int:
        """The head now: the block a fork of the whole history starts from."""
        return int(self.chain.w3.eth.block_number)


def impersonate(node_rpc: Any, address: str, *, fund: bool = False) -> None:
    """``anvil_impersonateAccount`` (and, on the stand-in, gas money: on mainnet the account
    has its own)."""
    node_rpc("anvil_impersonateAccount", [Web3.to_checksum_address(address)])
    if fund:
        node_rpc("anvil_setBalance", [Web3.to_checksum_address(address), _GAS_FUNDS])


def card_token(i: int) -> str:
    """The token cardholder `i` spends: a Gnosis Pay Safe spends one token (EURe on even Safes,
    USDCe on odd ones, as `cardpay.bootstrap.lifecycle.card_currencies`)."""
    return "EURe" if i % 2 == 0 else "USDCe"


def _amount(chain: LocalChain, symbol: str, cents: int) -> int:
    return int(cents * 10 ** (chain.deployment.token(symbol).decimals - 2))


def with_fees(tx: Mapping[str, Any]) -> dict[str, Any]:
    return {**tx, **FEES}


def build_standin(node: AnvilNode, *, cardholders: int = 6) -> StandIn:
    """Deploy the replicas at the mainnet addresses on `node` (chain id 100) and make the
    history (see the module's docstring)."""
    if cardholders < 2:
        raise ValueError("the stand-in needs at least 2 cardholders (one per token)")
    chain = LocalChain(node.rpc_url)
    impersonate(node.rpc, GNOSIS_PAY_RELAYER, fund=True)
    impersonate(node.rpc, SPENDER_DELEGATE, fund=True)
    impersonate(node.rpc, SETTLEMENT_OWNER, fund=True)
    d = chain.deploy(cardholders, at=GNOSIS_ADDRESSES,
                     relayer=Web3.to_checksum_address(SPENDER_DELEGATE),
                     settlement_owners=settlement_signers(chain),
                     settlement_threshold=SETTLEMENT_THRESHOLD)
    old = _old_spender_module(chain, d)
    spent: dict[str, int] = {s: 0 for s in d.tokens}
    refunded: dict[str, int] = {s: 0 for s in d.tokens}
    spends = 0

    def spend(module: str, i: int, cents: int) -> None:
        nonlocal spends
        symbol = card_token(i)
        amount = _amount(chain, symbol, cents)
        sender = Web3.to_checksum_address(GNOSIS_PAY_RELAYER) if module == old else d.relayer
        tx = with_fees({**chain.spend_request(symbol, i, amount, sender=sender), "to": module})
        chain.transact(f"history spend #{spends} via {module}", tx)
        spent[symbol] += amount
        spends += 1

    for i in range(cardholders):
        spend(old, i, 850 + 137 * i)
    _assign_spending_role(chain, d, old, member=False)  # the migration of 2026-06-04
    chain.w3.provider.make_request("anvil_mine", ["0x5"])  # type: ignore[arg-type]
    for i in range(cardholders):
        spend(d.spender_module, i, 4224 + 61 * i)
    for symbol in d.tokens:
        legs = [(i, _amount(chain, symbol, 235 + 10 * i))
                for i in range(cardholders) if card_token(i) == symbol]
        chain.refund_batch(symbol, legs, signers=settlement_signers(chain))
        refunded[symbol] += sum(amount for _, amount in legs)
    chain.mint("EURe", d.cardholders[0], 100 * 10**18)  # a top-up: v2 only, not card activity
    spend(d.spender_module, 1, 1999)
    return StandIn(node, chain, d, History(spends, spent, refunded))


def settlement_signers(chain: LocalChain) -> list[str]:
    """The settlement Safe's owners on the stand-in, as many as its threshold: the history's
    refunds are signed by both (the first sends, the second approves the hash first)."""
    return [Web3.to_checksum_address(SETTLEMENT_OWNER), chain.deployer]


def _old_spender_module(chain: LocalChain, d: LocalDeployment) -> str:
    """A second Spender module at the old mainnet address, with Gnosis Pay's relayer EOA as its
    enabled module and the role on every Roles module, as before the migration."""
    artifact = load_artifact("SpenderModule")
    created = chain.w3.eth.get_transaction_receipt(chain.transact(  # type: ignore[arg-type]
        "deploy the old SpenderModule",
        {"from": d.deployer, "data": artifact.bytecode, "gas": hex(3_000_000)}))
    old = chain.place(str(created["contractAddress"]), OLD_SPENDER_MODULE)
    module = chain.w3.eth.contract(address=Web3.to_checksum_address(old), abi=artifact.abi)
    chain.transact("enableModule on the old SpenderModule",
                   {"from": d.deployer, "to": old, "gas": hex(100_000),
                    "data": module.encode_abi(
                        "enableModule", args=[Web3.to_checksum_address(GNOSIS_PAY_RELAYER)])})
    _assign_spending_role(chain, d, old, member=True)
    return old


def _assign_spending_role(chain: LocalChain, d: LocalDeployment, module: str, *,
                          member: bool) -> None:
    roles = chain.w3.eth.contract(abi=load_artifact("RolesModule").abi)
    key = bytes.fromhex(SPENDING_ROLE.removeprefix("0x"))
    for owner, roles_module in zip(d.cardholder_owners, d.roles_modules, strict=True):
        data = roles.encode_abi("assignRoles", args=[module, [key], [member]])
        chain.transact(f"assignRoles {module} {member}",
                       {"from": owner, "to": roles_module, "data": data, "gas": hex(200_000)})


@contextlib.contextmanager
def gnosis_standin(*, cardholders: int = 6, **node_options: Any) -> Iterator[StandIn]:
    """A fresh stand-in (automine: one block per transaction), stopped when the `with` ends."""
    with AnvilNode(chain_id=GNOSIS_CHAIN_ID, **node_options) as node:
        yield build_standin(node, cardholders=cardholders)


def fork_args(fork_url: str, fork_block: int | None) -> tuple[str, ...]:
    """Anvil's options for a fork of `fork_url` (at `fork_block`, or its head)."""
    args: tuple[str, ...] = ("--fork-url", fork_url)
    if fork_block is not None:
        args += ("--fork-block-number", str(fork_block))
    return args


def fork_of(fork_url: str, fork_block: int | None = None, *,
            chain_id: int = GNOSIS_CHAIN_ID, extra_args: Sequence[str] = (),
            **node_options: Any) -> AnvilNode:
    """An Anvil (not started) forking `fork_url` at `fork_block`: a context manager."""
    return AnvilNode(chain_id=chain_id, extra_args=(*fork_args(fork_url, fork_block),
                                                    *extra_args), **node_options)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a stand-in and keep it until Ctrl-C or SIGTERM; print one JSON line: its URL, head
    block and history; `--out FILE` also writes its deployment description (the cardholder
    Safes, for `cardpay run --fork-url URL --cards-from FILE`)."""
    parser = argparse.ArgumentParser(prog="python -m cardpay.devstack.gnosis_standin",
                                     description="a local stand-in for Gnosis Chain (chain 100)")
    parser.add_argument("--cardholders", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write the deployment description (cards) here")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with gnosis_standin(cardholders=args.cardholders) as standin:
        if args.out is not None:
            args.out.write_text(json.dumps(standin.deployment.to_dict(), indent=2) + "\n")
        history = standin.history
        print(json.dumps({"rpc_url": standin.rpc_url, "head": standin.fork_block,
                          "history": {"spends": history.spends,
                                      "spent": {k: str(v) for k, v in history.spent.items()},
                                      "refunded": {k: str(v)
                                                   for k, v in history.refunded.items()}}}),
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

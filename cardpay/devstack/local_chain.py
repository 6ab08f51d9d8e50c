"""Deploy the local Gnosis Pay replicas on Anvil and drive card spends and refunds with web3.py.

What is deployed mirrors the mainnet shape (contracts/README.md, gnosis-pay-onchain.md §1a, §3):

- EURe is a v2 token (``CardToken``, ``DeployedToken.address``) plus a Monerium-style v1 frontend
  (``TokenFrontend``, ``DeployedToken.mirror``): spends and refunds go through the v1 address, so
  each one emits the v2 Transfer and then an identical v1 Transfer; mints are v2-only. USDCe is a
  single 6-decimal token.
- Each cardholder is a Safe (``CardholderSafe``, ``LocalDeployment.cardholders``: the identity
  an indexer must resolve) with a Roles module (``RolesModule``,
  ``LocalDeployment.roles_modules``, same order). The spender module calls the Roles module,
  which checks and consumes a daily allowance per token (``ConsumeAllowance``), has the Safe
  transfer, and is the ``account`` of the ``Spend`` log.

The settlement account is not a replica but Safe v1.3.0 itself, from Safe's published build
(``GnosisSafeL2`` behind a ``GnosisSafeProxy``, set up with owners and a threshold); refunds are
its ``execTransaction`` delegatecalling ``MultiSend``, as on mainnet. The Safe's singleton and
MultiSend are put at their canonical addresses (``SAFE_L2_SINGLETON``, ``MULTI_SEND``).

Accounts are Anvil's unlocked dev accounts (``eth_accounts``): account 0 deploys and owns the
tokens and spender module and is the settlement Safe's owner (unless ``deploy`` is given
others), account 1 is the spend relayer (an enabled
module of the spender module, which only takes spends from its enabled modules), accounts 2.. own
the cardholder Safes and their Roles modules (round-robin when there are more cardholders than
accounts) and so set the daily allowances.

Transactions go out with ``eth_sendTransaction`` (Anvil signs for its dev accounts) and a fixed
gas limit, so nothing is estimated and many can be in flight at once; receipts are then awaited
together. A reverted transaction raises :class:`TransactionReverted` with the revert reason,
recovered by replaying the call on the parent block (exact under Anvil's default automine, where
each transaction gets its own block; best effort with ``--block-time``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from eth_abi.abi import encode as abi_encode
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from cardpay.devstack.artifacts import (
    SAFE_ARTIFACTS,
    ContractArtifact,
    load_artifact,
    load_safe_artifact,
)
from cardpay.errors import CardpayError
from cardpay.handlers.onchain import (
    DELEGATECALL,
    MULTI_SEND,
    SPENDING_ROLE,
    encode_multi_send,
    encode_refund_batch,
)

__all__ = [
    "CONSUME_ALLOWANCE_EVENT_TOPIC0",
    "DAILY_ALLOWANCE_TOKENS",
    "DEFAULT_TOKENS",
    "SAFE_L2_SINGLETON",
    "SPENDING_ALLOWANCE_KEY",
    "SPEND_EVENT_TOPIC0",
    "TRANSFER_EVENT_TOPIC0",
    "DeployedToken",
    "LocalChain",
    "LocalChainError",
    "LocalDeployment",
    "RpcError",
    "TokenSpec",
    "TransactionReverted",
]

# keccak("Spend(address,address,address,uint256)"): the real Gnosis Pay Spender module event.
SPEND_EVENT_TOPIC0 = "0xca8fbb9bda99848f447971eae62ad0ad2bc7caf9afcc0d8e4e8ffcf7e06bc28f"
# keccak("Transfer(address,address,uint256)")
TRANSFER_EVENT_TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# keccak("ConsumeAllowance(bytes32,uint128,uint128)"): Zodiac Roles v2, emitted by the Roles module.
CONSUME_ALLOWANCE_EVENT_TOPIC0 = (
    "0x90355d540c2980efb4c360996dfc5405ee87e812e4f3db843857547cbdb5af65"
)
# keccak("SPENDING_ALLOWANCE"): Gnosis Pay's allowance key (the daily limit).
SPENDING_ALLOWANCE_KEY = "0xfe687fc128d1915040376d20ccb1bf40d838ddd82bf9b0ba3da683cc2a251623"

DAILY_ALLOWANCE_TOKENS = 1_000_000
"""Default daily allowance per cardholder and token, in whole tokens."""
DAY_SECONDS = 86_400
MONERIUM_SYMBOLS = frozenset({"EURe", "GBPe"})
"""Tokens that get a v1 frontend unless ``TokenSpec.frontend`` says otherwise."""
_UINT128_MAX = 2**128 - 1

CardholderRef = str | int
"""A cardholder Safe address, or its index in ``LocalDeployment.cardholders``."""


@dataclass(frozen=True)
class TokenSpec:
    """A token to deploy; ``mint_per_cardholder`` and ``daily_allowance`` are in base units.

    ``frontend``: deploy a Monerium-style v1 frontend in front of the token (None: yes for EURe
    and GBPe, as on mainnet). ``daily_allowance``: each cardholder's daily limit in this token
    (None: the larger of DAILY_ALLOWANCE_TOKENS whole tokens and ``mint_per_cardholder``, so by
    default only the balance limits spends).
    """

    symbol: str
    name: str
    decimals: int
    mint_per_cardholder: int
    frontend: bool | None = None
    daily_allowance: int | None = None

    @property
    def has_frontend(self) -> bool:
        return self.symbol in MONERIUM_SYMBOLS if self.frontend is None else self.frontend

    @property
    def allowance_per_day(self) -> int:
        if self.daily_allowance is not None:
            return self.daily_allowance
        default = int(DAILY_ALLOWANCE_TOKENS * 10**self.decimals)
        return min(max(default, self.mint_per_cardholder), _UINT128_MAX)


DEFAULT_TOKENS: tuple[TokenSpec, ...] = (
    TokenSpec("EURe", "Monerium EURe (local replica)", 18, 10_000 * 10**18),
    TokenSpec("USDCe", "Bridged USDC (local replica)", 6, 10_000 * 10**6),
)


@dataclass(frozen=True)
class DeployedToken:
    """``address`` is the token that holds balances (EURe: the v2 token, where mints happen);
    ``mirror`` its v1 frontend, if any, through which card spends and refunds go."""

    symbol: str
    name: str
    address: str
    decimals: int
    mirror: str | None = None

    @property
    def spend_address(self) -> str:
        """The address card spends and refunds use (the Spend's ``asset``): the v1 frontend
        when there is one, as on mainnet."""
        return self.mirror or self.address

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address emitting this token's Transfers (v2 first)."""
        return (self.address, self.mirror) if self.mirror else (self.address,)


@dataclass(frozen=True)
class LocalDeployment:
    """Addresses (checksummed) of one local deployment."""

    chain_id: int
    tokens: Mapping[str, DeployedToken]
    spender_module: str
    settlement_account: str
    cardholders: tuple[str, ...]
    cardholder_owners: tuple[str, ...]
    deployer: str
    relayer: str
    """Who sends spends: an enabled module of the spender module (Zodiac's moduleOnly)."""
    deployed_at_block: int
    roles_modules: tuple[str, ...] = ()
    """The Roles module of each cardholder Safe, same order as ``cardholders`` (the ``account``
    of that cardholder's Spend logs)."""

    def token(self, symbol: str) -> DeployedToken:
        try:
            return self.tokens[symbol]
        except KeyError:
            known = ", ".join(sorted(self.tokens))
            raise LocalChainError(f"unknown token {symbol!r} (deployed: {known})") from None

    @property
    def token_addresses(self) -> dict[str, str]:
        return {symbol: token.address for symbol, token in self.tokens.items()}

    def roles_module(self, cardholder: CardholderRef) -> str:
        """The Roles module of a cardholder (index, Safe address or the module's own address)."""
        if isinstance(cardholder, int):
            if not 0 <= cardholder < len(self.roles_modules):
                raise LocalChainError(
                    f"cardholder index {cardholder} out of range (0..{len(self.roles_modules)})"
                )
            return self.roles_modules[cardholder]
        address = Web3.to_checksum_address(cardholder)
        if address in self.roles_modules:
            return address
        try:
            return self.roles_modules[self.cardholders.index(address)]
        except ValueError:
            raise LocalChainError(
                f"{address} is not a cardholder Safe of this deployment"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (e.g. to hand the addresses to a listener's configuration); a
        token with a v1 frontend has ``"mirror"``, read by ``listener.presets.local_config``."""
        tokens: dict[str, dict[str, Any]] = {}
        for s, t in self.tokens.items():
            tokens[s] = {"name": t.name, "address": t.address, "decimals": t.decimals}
            if t.mirror:
                tokens[s]["mirror"] = t.mirror
        return {
            "chain_id": self.chain_id,
            "tokens": tokens,
            "spender_module": self.spender_module,
            "settlement_account": self.settlement_account,
            "cardholders": list(self.cardholders),
            "roles_modules": list(self.roles_modules),
            "cardholder_owners": list(self.cardholder_owners),
            "deployer": self.deployer,
            "relayer": self.relayer,
            "deployed_at_block": self.deployed_at_block,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalDeployment:
        return cls(
            chain_id=int(data["chain_id"]),
            tokens={s: _token_from_dict(s, t) for s, t in data["tokens"].items()},
            spender_module=str(data["spender_module"]),
            settlement_account=str(data["settlement_account"]),
            cardholders=tuple(data["cardholders"]),
            cardholder_owners=tuple(data["cardholder_owners"]),
            deployer=str(data["deployer"]),
            relayer=str(data["relayer"]),
            deployed_at_block=int(data["deployed_at_block"]),
            roles_modules=tuple(data.get("roles_modules", ())),
        )


class LocalChainError(CardpayError, RuntimeError):
    """A LocalChain operation failed."""


class RpcError(LocalChainError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.error = error
        self.rpc_message = str(error.get("message")) if isinstance(error, dict) else str(error)
        super().__init__(f"{method}: {self.rpc_message}")


class TransactionReverted(LocalChainError):
    """A transaction was mined with status 0."""

    def __init__(self, action: str, tx_hash: str, reason: str, block_number: int) -> None:
        self.action = action
        self.tx_hash = tx_hash
        self.reason = reason
        self.block_number = block_number
        super().__init__(f"{action} reverted (tx {tx_hash}, block {block_number}): {reason}")


@dataclass(frozen=True)
class _Pending:
    action: str
    tx: dict[str, Any]
    tx_hash: str


SAFE_L2_SINGLETON = "0x3E5c63644E683549055b9Be8653de26E0B4CD36E"
"""Safe v1.3.0's GnosisSafeL2 singleton at its canonical address (the settlement Safe's
implementation on Gnosis Chain: it emits SafeMultiSigTransaction)."""
_NO_ADDRESS = "0x" + "0" * 40


def _artifact(name: str) -> ContractArtifact:
    return load_safe_artifact(name) if name in SAFE_ARTIFACTS else load_artifact(name)


class LocalChain:
    """web3.py helper over an Anvil node: deploy the replicas, send spends and refunds."""

    SPEND_GAS = 300_000
    CALL_GAS = 300_000
    DEPLOY_GAS = 3_000_000
    SAFE_DEPLOY_GAS = 6_000_000
    REFUND_BATCH_BASE_GAS = 120_000
    REFUND_BATCH_GAS_PER_LEG = 50_000
    SPEND_BATCH_BASE_GAS = 100_000
    SPEND_BATCH_GAS_PER_SPEND = 55_000  # ~46k for a cold cardholder (Roles + Safe + v1/v2)

    def __init__(
        self,
        rpc_url: str,
        deployment: LocalDeployment | None = None,
        *,
        receipt_timeout: float = 60.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.rpc_url = rpc_url
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        self.receipt_timeout = receipt_timeout
        self._deployment = deployment
        self._accounts: list[str] | None = None
        self._contracts: dict[tuple[str, str], Contract] = {}

    # -- accounts and deployment -----------------------------------------------------------

    @property
    def accounts(self) -> list[str]:
        """Anvil's unlocked dev accounts, checksummed."""
        if self._accounts is None:
            raw = self._rpc("eth_accounts", [])
            self._accounts = [Web3.to_checksum_address(a) for a in raw]
            if len(self._accounts) < 2:
                raise LocalChainError("the node needs at least 2 unlocked accounts")
        return self._accounts

    @property
    def deployer(self) -> str:
        return self.accounts[0]

    @property
    def relayer(self) -> str:
        return self.accounts[1]

    @property
    def deployment(self) -> LocalDeployment:
        if self._deployment is None:
            raise LocalChainError("nothing deployed yet: call deploy() or pass a deployment")
        return self._deployment

    def deploy(
        self,
        n_cardholders: int,
        tokens: Sequence[TokenSpec] = DEFAULT_TOKENS,
        *,
        at: Mapping[str, str] | None = None,
        relayer: str | None = None,
        settlement_owners: Sequence[str] = (),
        settlement_threshold: int = 1,
    ) -> LocalDeployment:
        """Deploy the tokens (v2 + v1 frontend for EURe), the settlement account, the spender
        module (the relayer enabled as its module) and N funded cardholder Safes, each with its Roles module
        enabled, SPENDING_ROLE given to the spender module and a daily allowance per token.
        The result is also kept as ``self.deployment``.

        ``at`` puts contracts at given addresses instead of where they were created (the
        mainnet stand-in: the `gnosis` preset's addresses): keys are a token symbol, its v1
        frontend ``"<symbol>.v1"``, ``"settlement"`` and ``"spender"``. Each is moved right
        after its creation, before anything refers to it (see ``place``). ``relayer``: the
        account enabled as the spender module's module, which sends spends (default: dev
        account 1). ``settlement_owners`` / ``settlement_threshold``: the settlement Safe's
        (default: the deployer alone, threshold 1)."""
        if n_cardholders < 0:
            raise ValueError("n_cardholders must be >= 0")
        symbols = [t.symbol for t in tokens]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"duplicate token symbols: {symbols}")
        for t in tokens:
            if not 0 <= t.allowance_per_day <= _UINT128_MAX:
                raise ValueError(f"{t.symbol}: daily_allowance must fit in a uint128")
        chain_id = int(self._rpc("eth_chainId", []), 16)
        deployer, relayer = self.deployer, relayer or self.relayer
        targets = dict(at or {})
        owner_pool = self.accounts[2:]
        if n_cardholders and not owner_pool:
            raise LocalChainError("the node needs a 3rd unlocked account to own cardholders")
        owners = tuple(owner_pool[i % len(owner_pool)] for i in range(n_cardholders))
        safe_owners = [Web3.to_checksum_address(o) for o in settlement_owners or (deployer,)]
        if not 1 <= settlement_threshold <= len(safe_owners):
            raise ValueError(f"settlement_threshold {settlement_threshold} is not between 1 and "
                             f"its {len(safe_owners)} owners")

        # 1. tokens (v2 / single), the settlement Safe's singleton and MultiSend, spender module
        pending = [
            self._send_create(f"deploy {t.symbol}", "CardToken", [t.name, t.symbol, t.decimals])
            for t in tokens
        ]
        pending.append(self._send_create("deploy GnosisSafeL2", "GnosisSafeL2", [],
                                         gas=self.SAFE_DEPLOY_GAS))
        pending.append(self._send_create("deploy MultiSend", "MultiSend", []))
        pending.append(self._send_create("deploy SpenderModule", "SpenderModule", []))
        receipts = self._wait(pending)
        deployed_at_block = min(int(r["blockNumber"], 16) for r in receipts)
        keys = [t.symbol for t in tokens] + ["singleton", "multisend", "spender"]
        canonical = {"singleton": SAFE_L2_SINGLETON, "multisend": MULTI_SEND}
        addresses = [self.place(_created_address(r), targets.get(k, canonical.get(k)))
                     for k, r in zip(keys, receipts, strict=True)]
        token_addresses = addresses[: len(tokens)]
        singleton, spender = addresses[len(tokens)], addresses[len(tokens) + 2]

        # 2. the settlement Safe (a proxy of the singleton), v1 frontends, cardholder Safes, the
        #    relayer
        fronted = [(t, a) for t, a in zip(tokens, token_addresses, strict=True) if t.has_frontend]
        pending = [
            self._send_create(f"deploy {t.symbol} v1 frontend", "TokenFrontend",
                              [t.name, t.symbol, a])
            for t, a in fronted
        ]  # fmt: skip
        pending += [
            self._send_create(f"deploy CardholderSafe #{i}", "CardholderSafe", [o])
            for i, o in enumerate(owners)
        ]
        pending.append(
            self._send_call("enableModule relayer", deployer, "SpenderModule", spender,
                            "enableModule", relayer)
        )
        pending.append(self._send_create("deploy the settlement Safe", "GnosisSafeProxy",
                                         [singleton]))
        receipts = self._wait(pending)
        mirrors = {
            t.symbol: self.place(_created_address(r), targets.get(f"{t.symbol}.v1"))
            for (t, _), r in zip(fronted, receipts[: len(fronted)], strict=True)
        }
        safes = tuple(_created_address(r) for r in receipts[len(fronted) : -2])
        settlement = self.place(_created_address(receipts[-1]), targets.get("settlement"))

        deployment = LocalDeployment(
            chain_id=chain_id,
            tokens={
                t.symbol: DeployedToken(t.symbol, t.name, a, t.decimals, mirrors.get(t.symbol))
                for t, a in zip(tokens, token_addresses, strict=True)
            },
            spender_module=spender,
            settlement_account=settlement,
            cardholders=safes,
            cardholder_owners=owners,
            deployer=deployer,
            relayer=relayer,
            deployed_at_block=deployed_at_block,
        )

        # 3. v2 tokens accept their frontend; the settlement Safe's owners; Roles modules; fund
        #    every Safe (mints on v2)
        pending = [
            self._send_call(f"setFrontend {t.symbol}", deployer, "CardToken", a, "setFrontend",
                            mirrors[t.symbol])
            for t, a in fronted
        ]  # fmt: skip
        pending.append(self._send_call(
            "setup the settlement Safe", deployer, "GnosisSafeL2", settlement, "setup",
            safe_owners, settlement_threshold, _NO_ADDRESS, b"", _NO_ADDRESS, _NO_ADDRESS, 0,
            _NO_ADDRESS))
        pending += [
            self._send_create(f"deploy RolesModule #{i}", "RolesModule", [owner, safe, settlement])
            for i, (owner, safe) in enumerate(zip(owners, safes, strict=True))
        ]
        n_setup = len(pending)
        for spec, token_address in zip(tokens, token_addresses, strict=True):
            if spec.mint_per_cardholder <= 0:
                continue
            for holder in safes:
                pending.append(
                    self._send_call(
                        f"mint {spec.symbol}", deployer, "CardToken", token_address, "mint",
                        holder, spec.mint_per_cardholder,
                    )
                )  # fmt: skip
        receipts = self._wait(pending)
        roles = tuple(_created_address(r) for r in receipts[len(fronted) + 1 : n_setup])

        # 4. each owner enables the Roles module on the Safe, gives the spender module
        #    SPENDING_ROLE and sets the daily allowance of every token (on its spend address)
        pending = []
        for i, (owner, safe, module) in enumerate(zip(owners, safes, roles, strict=True)):
            pending.append(
                self._send_call(
                    f"enableModule #{i}", owner, "CardholderSafe", safe, "enableModule", module
                )
            )
            pending.append(
                self._send_call(
                    f"assignRoles #{i}",
                    owner,
                    "RolesModule",
                    module,
                    "assignRoles",
                    spender,
                    [_bytes32(SPENDING_ROLE)],
                    [True],
                )
            )
            for spec in tokens:
                token = deployment.token(spec.symbol)
                pending.append(
                    self._send_allowance(
                        f"setAllowance {spec.symbol} #{i}",
                        owner,
                        module,
                        token.spend_address,
                        spec.allowance_per_day,
                    )
                )
        self._wait(pending)

        self._deployment = replace(deployment, roles_modules=roles)
        return self._deployment

    PLACED_SLOTS = 8
    """Storage slots ``place`` copies: the replicas' constructors write only their first slots
    (a token's name and symbol, short strings stored in place); everything else they set is
    immutable, so it is in the code."""

    def place(self, created: str, target: str | None) -> str:
        """Move a contract just created (nothing refers to it yet, its mappings are empty) to
        ``target`` with ``anvil_setCode`` and ``anvil_setStorageAt``; returns where it is now
        (checksummed). No ``target``: it stays where it was created."""
        if target is None:
            return created
        where = Web3.to_checksum_address(target)
        self._rpc("anvil_setCode", [where, self._rpc("eth_getCode", [created, "latest"])])
        for slot in range(self.PLACED_SLOTS):
            value = self._rpc("eth_getStorageAt", [created, hex(slot), "latest"])
            if int(value, 16):
                self._rpc("anvil_setStorageAt", [where, "0x" + format(slot, "064x"), value])
        return where

    def transact(self, action: str, tx: Mapping[str, Any]) -> str:
        """Send one ``eth_sendTransaction`` object and wait for its receipt (TransactionReverted
        on a revert); returns its hash."""
        pending = self._send(action, dict(tx))
        self._wait([pending])
        return pending.tx_hash

    # -- card flows ------------------------------------------------------------------------

    def spend(
        self,
        token_symbol: str,
        cardholder: CardholderRef,
        amount_base_units: int,
        *,
        sender: str | None = None,
        receiver: str | None = None,
    ) -> str:
        """A card spend: the relayer (or ``sender``) calls SpenderModule.spend with the
        cardholder's Roles module as ``account`` and the token's spend address (EURe: the v1
        frontend) as ``asset``; the Roles module consumes the daily allowance and the Safe sends
        the amount to the settlement account (or ``receiver``, which the Roles module refuses).
        Waits for the receipt; returns the tx hash; raises TransactionReverted on a revert
        (e.g. "RolesModule: amount exceeds the daily allowance")."""
        pending = self._send_spend(token_symbol, cardholder, amount_base_units, sender, receiver)
        self._wait([pending])
        return pending.tx_hash

    def spend_many(self, spends: Iterable[tuple[str, CardholderRef, int]]) -> list[str]:
        """Send many spends ``(token_symbol, cardholder, amount)`` back to back, then wait for
        all receipts. Returns the tx hashes in order."""
        pending = [self._send_spend(s, c, a, None, None) for s, c, a in spends]
        self._wait(pending)
        return [p.tx_hash for p in pending]

    def spend_request(
        self,
        token_symbol: str,
        cardholder: CardholderRef,
        amount_base_units: int,
        *,
        sender: str | None = None,
        receiver: str | None = None,
    ) -> dict[str, Any]:
        """The ``eth_sendTransaction`` object of a spend, not sent (e.g. to hand to
        ``anvil_reorg``)."""
        d = self.deployment
        to = Web3.to_checksum_address(receiver) if receiver else d.settlement_account
        data = self._contract("SpenderModule", d.spender_module).encode_abi(
            "spend",
            args=[d.token(token_symbol).spend_address, d.roles_module(cardholder), to,
                  amount_base_units, _bytes32(SPENDING_ROLE)],
        )  # fmt: skip
        return {"from": sender or d.relayer, "to": d.spender_module, "data": data,
                "gas": hex(self.SPEND_GAS)}  # fmt: skip

    def refund(self, token_symbol: str, cardholder: CardholderRef, amount: int) -> str:
        """One refund: a token transfer from the settlement account to the cardholder Safe,
        through the v1 frontend for EURe (a v2 Transfer, then the identical v1 one)."""
        return self.refund_batch(token_symbol, [(cardholder, amount)])

    def refund_batch(self, token_symbol: str, legs: Sequence[tuple[CardholderRef, int]], *,
                     signers: Sequence[str] = ()) -> str:
        """Many refunds in one transaction of the settlement Safe (one Transfer log per leg,
        two for EURe: v2 then v1, like Gnosis Pay's MultiSend batches); see
        `refund_batch_requests` for `signers`."""
        hashes = [self.transact(f"refund batch of {len(legs)} {token_symbol} legs: {i}", tx)
                  for i, tx in enumerate(self.refund_batch_requests(token_symbol, legs,
                                                                    signers=signers))]
        return hashes[-1]

    def refund_batch_requests(self, token_symbol: str,
                              legs: Sequence[tuple[CardholderRef, int]], *,
                              signers: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The transactions (``eth_sendTransaction`` objects, to send in order) of one refund
        batch: each of ``signers`` but the first approves the Safe transaction's hash
        (``approveHash``, at the Safe's nonce now), then the first sends ``execTransaction``
        with all their approvals (cardpay's own call, `encode_refund_batch`). ``signers``:
        owners of the settlement Safe, as many as its threshold (default: the deployer)."""
        if not legs:
            raise ValueError("refund_batch needs at least one leg")
        d = self.deployment
        token = d.token(token_symbol).spend_address
        paid = [(self._cardholder(c), int(a)) for c, a in legs]
        sender, *approvers = [Web3.to_checksum_address(s) for s in signers or (d.deployer,)]
        safe = self._contract("GnosisSafeL2", d.settlement_account)
        txs: list[dict[str, Any]] = []
        if approvers:
            nonce = safe.functions.nonce().call()
            safe_tx_hash = safe.functions.getTransactionHash(
                Web3.to_checksum_address(MULTI_SEND), 0,
                bytes.fromhex(encode_multi_send(token, paid)), DELEGATECALL, 0, 0, 0,
                _NO_ADDRESS, _NO_ADDRESS, nonce).call()
            data = safe.encode_abi("approveHash", args=[safe_tx_hash])
            txs += [{"from": a, "to": d.settlement_account, "data": data,
                     "gas": hex(self.CALL_GAS)} for a in approvers]
        gas = self.REFUND_BATCH_BASE_GAS + self.REFUND_BATCH_GAS_PER_LEG * len(legs)
        txs.append({"from": sender, "to": d.settlement_account, "gas": hex(gas),
                    "data": "0x" + encode_refund_batch(token, paid, [sender, *approvers])})
        return txs

    def mint(self, token_symbol: str, to: str, amount: int) -> str:
        """Mint tokens on the v2 token (a Transfer from address(0), like a Monerium top-up;
        none from the v1 frontend)."""
        d = self.deployment
        pending = self._send_call(
            f"mint {amount} {token_symbol} to {to}", d.deployer, "CardToken",
            d.token(token_symbol).address, "mint", Web3.to_checksum_address(to), amount,
        )  # fmt: skip
        self._wait([pending])
        return pending.tx_hash

    # -- benchmark batching (SpendBatcher) -------------------------------------------------

    def deploy_spend_batcher(self) -> str:
        """Deploy the benchmark-only SpendBatcher (owned by the deployer) and enable it as a
        module of the spender module. Returns its address. Its spends are real
        SpenderModule.spend calls, so the logs are those of single spends, many per receipt."""
        d = self.deployment
        pending = self._send_create("deploy SpendBatcher", "SpendBatcher", [d.spender_module])
        batcher = _created_address(self._wait([pending])[0])
        self._wait([
            self._send_call(
                "enableModule SpendBatcher", d.deployer, "SpenderModule", d.spender_module,
                "enableModule", batcher,
            )
        ])  # fmt: skip
        return batcher

    def spend_batches(
        self,
        batcher: str,
        batches: Iterable[Sequence[tuple[str, CardholderRef, int]]],
        *,
        in_flight: int = 32,
        gas: int | None = None,
    ) -> list[str]:
        """One SpendBatcher.spendBatch transaction per batch of spends ``(token_symbol,
        cardholder, amount)``, all to the settlement account, in order. Up to ``in_flight``
        transactions are sent before their receipts are awaited: with 1, Anvil's automine
        puts each batch in a block of its own; with more, a block may take two or more when
        they arrive while it mines. ``gas`` overrides the gas limit of every transaction
        (default: SPEND_BATCH_BASE_GAS + SPEND_BATCH_GAS_PER_SPEND per spend). Returns the tx
        hashes in order; raises TransactionReverted if a batch reverts (all or nothing)."""
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        d = self.deployment
        address = Web3.to_checksum_address(batcher)
        hashes: list[str] = []
        window: list[_Pending] = []
        for number, batch in enumerate(batches):
            if not batch:
                raise ValueError(f"batch #{number} is empty")
            assets = [d.token(symbol).spend_address for symbol, _, _ in batch]
            accounts = [d.roles_module(cardholder) for _, cardholder, _ in batch]
            amounts = [int(amount) for _, _, amount in batch]
            data = _SPEND_BATCH_SELECTOR + abi_encode(
                ["address[]", "address[]", "address", "uint256[]"],
                [assets, accounts, d.settlement_account, amounts],
            )
            limit = gas or self.SPEND_BATCH_BASE_GAS + self.SPEND_BATCH_GAS_PER_SPEND * len(batch)
            tx = {"from": d.deployer, "to": address, "data": "0x" + data.hex(), "gas": hex(limit)}
            window.append(self._send(f"spendBatch #{number} of {len(batch)} spends", tx))
            if len(window) >= in_flight:
                self._wait(window, poll_interval=0.001)
                hashes.extend(p.tx_hash for p in window)
                window = []
        if window:
            self._wait(window, poll_interval=0.001)
            hashes.extend(p.tx_hash for p in window)
        return hashes

    def set_daily_allowance(
        self, cardholder: CardholderRef, token_symbol: str, amount_per_day: int
    ) -> str:
        """Set a cardholder's daily limit in a token (base units), full from now on and
        refilled every 86,400 s of block time. Sent by the Roles module's owner."""
        d = self.deployment
        index = self._cardholder_index(cardholder)
        pending = self._send_allowance(
            f"setAllowance {token_symbol} of {d.cardholders[index]}",
            d.cardholder_owners[index], d.roles_modules[index],
            d.token(token_symbol).spend_address, amount_per_day,
        )  # fmt: skip
        self._wait([pending])
        return pending.tx_hash

    def allowance_left(self, cardholder: CardholderRef, token_symbol: str) -> int:
        """What the cardholder may still spend in the token now (refills included)."""
        d = self.deployment
        module = d.roles_module(cardholder)
        data = self._contract("RolesModule", module).encode_abi(
            "accruedAllowance", args=[d.token(token_symbol).spend_address]
        )
        result = self._rpc("eth_call", [{"to": module, "data": data}, "latest"])
        return int(result[2:66], 16)

    def balance_of(self, token_symbol: str, owner: CardholderRef) -> int:
        address = self._cardholder(owner)
        token = self.deployment.token(token_symbol).address
        data = self._contract("CardToken", token).encode_abi("balanceOf", args=[address])
        result = self._rpc("eth_call", [{"to": token, "data": data}, "latest"])
        return int(result, 16)

    def receipt(self, tx_hash: str) -> dict[str, Any]:
        """The raw JSON-RPC receipt (hex strings), or an error if it is not mined."""
        receipt = self._rpc("eth_getTransactionReceipt", [tx_hash])
        if receipt is None:
            raise LocalChainError(f"no receipt for {tx_hash}")
        return cast(dict[str, Any], receipt)

    # -- internals -------------------------------------------------------------------------

    def _rpc(self, method: str, params: Sequence[Any]) -> Any:
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        error = response.get("error")
        if error is not None:
            raise RpcError(method, error)
        return response.get("result")

    def _cardholder(self, ref: CardholderRef) -> str:
        if isinstance(ref, int):
            holders = self.deployment.cardholders
            if not 0 <= ref < len(holders):
                raise LocalChainError(f"cardholder index {ref} out of range (0..{len(holders)})")
            return holders[ref]
        return Web3.to_checksum_address(ref)

    def _cardholder_index(self, ref: CardholderRef) -> int:
        d = self.deployment
        module = d.roles_module(ref)
        return d.roles_modules.index(module)

    def _contract(self, name: str, address: str) -> Contract:
        key = (name, address)
        contract = self._contracts.get(key)
        if contract is None:
            artifact = _artifact(name)
            contract = self.w3.eth.contract(
                address=Web3.to_checksum_address(address), abi=artifact.abi
            )
            self._contracts[key] = contract
        return contract

    def _send_spend(
        self,
        token_symbol: str,
        cardholder: CardholderRef,
        amount: int,
        sender: str | None,
        receiver: str | None,
    ) -> _Pending:
        tx = self.spend_request(token_symbol, cardholder, amount, sender=sender, receiver=receiver)
        safe = self.deployment.cardholders[self._cardholder_index(cardholder)]
        return self._send(f"spend {amount} {token_symbol} from {safe}", tx)

    def _send_allowance(
        self, action: str, owner: str, module: str, token: str, per_day: int
    ) -> _Pending:
        """RolesModule.setAllowance(token, L, L, L, 1 day, now): a daily limit L."""
        if not 0 <= per_day <= _UINT128_MAX:
            raise ValueError("a daily allowance must fit in a uint128")
        return self._send_call(
            action, owner, "RolesModule", module, "setAllowance", token, per_day, per_day,
            per_day, DAY_SECONDS, 0,
        )  # fmt: skip

    def _send_call(
        self,
        action: str,
        sender: str,
        contract_name: str,
        address: str,
        function: str,
        *args: Any,
        gas: int | None = None,
    ) -> _Pending:
        data = self._contract(contract_name, address).encode_abi(function, args=list(args))
        tx = {"from": sender, "to": address, "data": data, "gas": hex(gas or self.CALL_GAS)}
        return self._send(action, tx)

    def _send_create(self, action: str, contract_name: str, args: Sequence[Any], *,
                     gas: int | None = None) -> _Pending:
        artifact = _artifact(contract_name)
        data = artifact.bytecode + _encode_constructor_args(artifact, args)
        tx = {"from": self.deployer, "data": data, "gas": hex(gas or self.DEPLOY_GAS)}
        return self._send(action, tx)

    def _send(self, action: str, tx: dict[str, Any]) -> _Pending:
        try:
            tx_hash = str(self._rpc("eth_sendTransaction", [tx]))
        except RpcError as exc:
            raise LocalChainError(f"{action}: the node rejected the transaction: {exc}") from exc
        return _Pending(action, tx, tx_hash)

    def _wait(
        self, pending: Sequence[_Pending], *, poll_interval: float = 0.01
    ) -> list[dict[str, Any]]:
        """Wait for every receipt; raise TransactionReverted for the first failed one."""
        receipts: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.receipt_timeout
        for item in pending:
            while True:
                receipt = self._rpc("eth_getTransactionReceipt", [item.tx_hash])
                if receipt is not None:
                    receipts.append(receipt)
                    break
                if time.monotonic() > deadline:
                    raise LocalChainError(
                        f"{item.action}: no receipt for {item.tx_hash} "
                        f"after {self.receipt_timeout:.0f}s"
                    )
                time.sleep(poll_interval)
        failed = [(p, r) for p, r in zip(pending, receipts, strict=True) if r["status"] != "0x1"]
        if failed:
            item, receipt = failed[0]
            block = int(receipt["blockNumber"], 16)
            reason = self._revert_reason(item.tx, block)
            if len(failed) > 1:
                reason += f" ({len(failed) - 1} more of {len(pending)} transactions also failed)"
            raise TransactionReverted(item.action, item.tx_hash, reason, block)
        return receipts

    def _revert_reason(self, tx: Mapping[str, Any], block_number: int) -> str:
        call = {k: tx[k] for k in ("from", "to", "data", "gas") if k in tx}
        try:
            self._rpc("eth_call", [call, hex(max(block_number - 1, 0))])
        except RpcError as exc:
            return exc.rpc_message
        return "reverted on chain, but the replay on the parent block succeeded (reason unknown)"


# SpendBatcher.spendBatch(address[],address[],address,uint256[])
_SPEND_BATCH_SELECTOR = bytes(
    Web3.keccak(text="spendBatch(address[],address[],address,uint256[])")
)[:4]


def _token_from_dict(symbol: str, data: Mapping[str, Any]) -> DeployedToken:
    mirror = data.get("mirror")
    return DeployedToken(
        symbol, str(data["name"]), str(data["address"]), int(data["decimals"]),
        str(mirror) if mirror else None,
    )  # fmt: skip


def _bytes32(hex_value: str) -> bytes:
    return bytes.fromhex(hex_value.removeprefix("0x"))


def _created_address(receipt: Mapping[str, Any]) -> str:
    address = receipt.get("contractAddress")
    if not address:
        raise LocalChainError(f"no contract created by {receipt.get('transactionHash')}")
    return Web3.to_checksum_address(address)


def _encode_constructor_args(artifact: ContractArtifact, args: Sequence[Any]) -> str:
    inputs: list[dict[str, Any]] = next(
        (item.get("inputs", []) for item in artifact.abi if item.get("type") == "constructor"), []
    )
    if len(inputs) != len(args):
        raise LocalChainError(
            f"{artifact.name} constructor takes {len(inputs)} arguments, got {len(args)}"
        )
    if not inputs:
        return ""
    return abi_encode([i["type"] for i in inputs], list(args)).hex()

"""Deploy the local Gnosis Pay replicas on Anvil and drive card spends and refunds with web3.py.

Accounts are Anvil's unlocked dev accounts (``eth_accounts``): account 0 deploys and owns every
contract (tokens, settlement account, spender module), account 1 is the spend relayer, accounts
2.. own the cardholder accounts (round-robin when there are more cardholders than accounts).

Transactions go out with ``eth_sendTransaction`` (Anvil signs for its dev accounts) and a fixed
gas limit, so nothing is estimated and many can be in flight at once; receipts are then awaited
together. A reverted transaction raises :class:`TransactionReverted` with the revert reason,
recovered by replaying the call on the parent block (exact under Anvil's default automine, where
each transaction gets its own block; best effort with ``--block-time``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi.abi import encode as abi_encode
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from cardpay.chain import ContractArtifact, load_artifact

__all__ = [
    "DEFAULT_TOKENS",
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

CardholderRef = str | int
"""A cardholder account address, or its index in ``LocalDeployment.cardholders``."""


@dataclass(frozen=True)
class TokenSpec:
    """A token to deploy; ``mint_per_cardholder`` is in base units."""

    symbol: str
    name: str
    decimals: int
    mint_per_cardholder: int


DEFAULT_TOKENS: tuple[TokenSpec, ...] = (
    TokenSpec("EURe", "Monerium EURe (local replica)", 18, 10_000 * 10**18),
    TokenSpec("USDCe", "Bridged USDC (local replica)", 6, 10_000 * 10**6),
)


@dataclass(frozen=True)
class DeployedToken:
    symbol: str
    name: str
    address: str
    decimals: int


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
    deployed_at_block: int

    def token(self, symbol: str) -> DeployedToken:
        try:
            return self.tokens[symbol]
        except KeyError:
            known = ", ".join(sorted(self.tokens))
            raise LocalChainError(f"unknown token {symbol!r} (deployed: {known})") from None

    @property
    def token_addresses(self) -> dict[str, str]:
        return {symbol: token.address for symbol, token in self.tokens.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (e.g. to hand the addresses to a listener's configuration)."""
        return {
            "chain_id": self.chain_id,
            "tokens": {
                s: {"name": t.name, "address": t.address, "decimals": t.decimals}
                for s, t in self.tokens.items()
            },
            "spender_module": self.spender_module,
            "settlement_account": self.settlement_account,
            "cardholders": list(self.cardholders),
            "cardholder_owners": list(self.cardholder_owners),
            "deployer": self.deployer,
            "relayer": self.relayer,
            "deployed_at_block": self.deployed_at_block,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalDeployment:
        return cls(
            chain_id=int(data["chain_id"]),
            tokens={
                s: DeployedToken(s, str(t["name"]), str(t["address"]), int(t["decimals"]))
                for s, t in data["tokens"].items()
            },
            spender_module=str(data["spender_module"]),
            settlement_account=str(data["settlement_account"]),
            cardholders=tuple(data["cardholders"]),
            cardholder_owners=tuple(data["cardholder_owners"]),
            deployer=str(data["deployer"]),
            relayer=str(data["relayer"]),
            deployed_at_block=int(data["deployed_at_block"]),
        )


class LocalChainError(RuntimeError):
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


class LocalChain:
    """web3.py helper over an Anvil node: deploy the replicas, send spends and refunds."""

    SPEND_GAS = 300_000
    CALL_GAS = 300_000
    DEPLOY_GAS = 3_000_000
    REFUND_BATCH_BASE_GAS = 80_000
    REFUND_BATCH_GAS_PER_LEG = 45_000
    SPEND_BATCH_BASE_GAS = 100_000
    SPEND_BATCH_GAS_PER_SPEND = 30_000

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
        self, n_cardholders: int, tokens: Sequence[TokenSpec] = DEFAULT_TOKENS
    ) -> LocalDeployment:
        """Deploy tokens, settlement account, spender module (relayer allowed) and N funded
        cardholder accounts; the result is also kept as ``self.deployment``."""
        if n_cardholders < 0:
            raise ValueError("n_cardholders must be >= 0")
        symbols = [t.symbol for t in tokens]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"duplicate token symbols: {symbols}")
        chain_id = int(self._rpc("eth_chainId", []), 16)
        deployer, relayer = self.deployer, self.relayer
        owner_pool = self.accounts[2:]
        if n_cardholders and not owner_pool:
            raise LocalChainError("the node needs a 3rd unlocked account to own cardholders")

        # 1. tokens, settlement account, spender module
        pending = [
            self._send_create(f"deploy {t.symbol}", "CardToken", [t.name, t.symbol, t.decimals])
            for t in tokens
        ]
        pending.append(self._send_create("deploy SettlementAccount", "SettlementAccount", []))
        pending.append(self._send_create("deploy SpenderModule", "SpenderModule", []))
        receipts = self._wait(pending)
        deployed_at_block = min(int(r["blockNumber"], 16) for r in receipts)
        addresses = [_created_address(r) for r in receipts]
        token_addresses = addresses[: len(tokens)]
        settlement, spender = addresses[len(tokens)], addresses[len(tokens) + 1]

        # 2. cardholder accounts (module = spender module) and the relayer
        owners = tuple(owner_pool[i % len(owner_pool)] for i in range(n_cardholders))
        pending = [
            self._send_create(f"deploy CardholderAccount #{i}", "CardholderAccount", [o, spender])
            for i, o in enumerate(owners)
        ]
        pending.append(
            self._send_call("addRelayer", deployer, "SpenderModule", spender, "addRelayer", relayer)
        )
        receipts = self._wait(pending)
        cardholders = tuple(_created_address(r) for r in receipts[:n_cardholders])

        # 3. fund every cardholder account
        pending = []
        for spec, token_address in zip(tokens, token_addresses, strict=True):
            if spec.mint_per_cardholder <= 0:
                continue
            for holder in cardholders:
                pending.append(
                    self._send_call(
                        f"mint {spec.symbol}", deployer, "CardToken", token_address, "mint",
                        holder, spec.mint_per_cardholder,
                    )
                )  # fmt: skip
        self._wait(pending)

        self._deployment = LocalDeployment(
            chain_id=chain_id,
            tokens={
                t.symbol: DeployedToken(t.symbol, t.name, a, t.decimals)
                for t, a in zip(tokens, token_addresses, strict=True)
            },
            spender_module=spender,
            settlement_account=settlement,
            cardholders=cardholders,
            cardholder_owners=owners,
            deployer=deployer,
            relayer=relayer,
            deployed_at_block=deployed_at_block,
        )
        return self._deployment

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
        """A card spend: the relayer (or ``sender``) calls SpenderModule.spend, moving the amount
        from the cardholder account to the settlement account (or ``receiver``). Waits for the
        receipt; returns the tx hash; raises TransactionReverted on a revert."""
        pending = self._send_spend(token_symbol, cardholder, amount_base_units, sender, receiver)
        self._wait([pending])
        return pending.tx_hash

    def spend_many(self, spends: Iterable[tuple[str, CardholderRef, int]]) -> list[str]:
        """Send many spends ``(token_symbol, cardholder, amount)`` back to back, then wait for
        all receipts. Returns the tx hashes in order."""
        pending = [self._send_spend(s, c, a, None, None) for s, c, a in spends]
        self._wait(pending)
        return [p.tx_hash for p in pending]

    def refund(self, token_symbol: str, cardholder: CardholderRef, amount: int) -> str:
        """One refund: a plain token Transfer from the settlement account to the cardholder."""
        d = self.deployment
        to = self._cardholder(cardholder)
        token = d.token(token_symbol).address
        pending = self._send_call(
            f"refund {amount} {token_symbol} to {to}", d.deployer, "SettlementAccount",
            d.settlement_account, "refund", token, to, amount,
        )  # fmt: skip
        self._wait([pending])
        return pending.tx_hash

    def refund_batch(self, token_symbol: str, legs: Sequence[tuple[CardholderRef, int]]) -> str:
        """Many refunds in one transaction (one Transfer log per leg, like Gnosis Pay's
        MultiSend batches)."""
        if not legs:
            raise ValueError("refund_batch needs at least one leg")
        d = self.deployment
        recipients = [self._cardholder(c) for c, _ in legs]
        amounts = [int(a) for _, a in legs]
        gas = self.REFUND_BATCH_BASE_GAS + self.REFUND_BATCH_GAS_PER_LEG * len(legs)
        pending = self._send_call(
            f"refundBatch of {len(legs)} {token_symbol} legs", d.deployer, "SettlementAccount",
            d.settlement_account, "refundBatch", d.token(token_symbol).address, recipients,
            amounts, gas=gas,
        )  # fmt: skip
        self._wait([pending])
        return pending.tx_hash

    def mint(self, token_symbol: str, to: str, amount: int) -> str:
        """Mint tokens (a Transfer from address(0), like a Monerium top-up)."""
        d = self.deployment
        pending = self._send_call(
            f"mint {amount} {token_symbol} to {to}", d.deployer, "CardToken",
            d.token(token_symbol).address, "mint", Web3.to_checksum_address(to), amount,
        )  # fmt: skip
        self._wait([pending])
        return pending.tx_hash

    # -- benchmark batching (SpendBatcher) -------------------------------------------------

    def deploy_spend_batcher(self) -> str:
        """Deploy the benchmark-only SpendBatcher (owned by the deployer) and allow it as a
        relayer on the spender module. Returns its address. Its spends are real
        SpenderModule.spend calls, so the logs are those of single spends, many per receipt."""
        d = self.deployment
        pending = self._send_create("deploy SpendBatcher", "SpendBatcher", [d.spender_module])
        batcher = _created_address(self._wait([pending])[0])
        self._wait([
            self._send_call(
                "setRelayer SpendBatcher", d.deployer, "SpenderModule", d.spender_module,
                "setRelayer", batcher, True,
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
            assets = [d.token(symbol).address for symbol, _, _ in batch]
            accounts = [self._cardholder(cardholder) for _, cardholder, _ in batch]
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

    def _contract(self, name: str, address: str) -> Contract:
        key = (name, address)
        contract = self._contracts.get(key)
        if contract is None:
            artifact = load_artifact(name)
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
        d = self.deployment
        account = self._cardholder(cardholder)
        to = Web3.to_checksum_address(receiver) if receiver else d.settlement_account
        return self._send_call(
            f"spend {amount} {token_symbol} from {account}", sender or d.relayer,
            "SpenderModule", d.spender_module, "spend", d.token(token_symbol).address, account,
            to, amount, gas=self.SPEND_GAS,
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

    def _send_create(self, action: str, contract_name: str, args: Sequence[Any]) -> _Pending:
        artifact = load_artifact(contract_name)
        data = artifact.bytecode + _encode_constructor_args(artifact, args)
        tx = {"from": self.deployer, "data": data, "gas": hex(self.DEPLOY_GAS)}
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

"""Composition root of the on-chain effect adapters: the spend relayer and the refund sender.

Each is built from the settings (its key, the stuck timeout), the database and the node, and
answers through the saga runner. The saga worker calls their `run_once()` in its loop; each
call claims what is pending, signs and records it, commits, broadcasts, and answers what was
mined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from sqlalchemy import Engine

from cardpay.errors import CardpayError
from cardpay.handlers.onchain import (
    ChainTargets,
    EffectAnswers,
    OnchainUnitOfWork,
    RefundSender,
    SignedTx,
    Signer,
    Slot,
    SpendRelayer,
    TransactionSender,
    link_spend,
)
from cardpay.onchain.sender import ImpersonatedSigner, ImpersonatingNode, LocalSigner, RpcNode
from cardpay.postgres.uow import onchain_uow_factory
from cardpay.settings import Secret, Settings
from listener.errors import ListenerError
from listener.presets import ChainConfig
from listener.rpc import HttpJsonRpc

log = logging.getLogger(__name__)


class RelayerNotConfigured(CardpayError):
    """A key, the RPC URL or the chain's addresses are missing."""


def _now() -> datetime:
    return datetime.now(UTC)


def chain_targets(config: ChainConfig) -> ChainTargets:
    """Where spends and refunds go, from the chain preset: its Spender module (the one it
    names for new spends, or its only one), its settlement account, and per currency the
    address card spends use (the v1 frontend of a token that has one, as Gnosis Pay spends
    EURe)."""
    module = config.spend_module
    if module is None and len(config.spender_modules) != 1:
        raise RelayerNotConfigured(
            f"the {config.name} preset names {len(config.spender_modules)} Spender modules and "
            "none for new spends; the relayer needs exactly one")
    frontends = {canonical: mirror for mirror, canonical in config.mirrors.items()}
    tokens: dict[str, tuple[str, int]] = {}
    for address, currency in config.tokens.items():
        if address in config.mirrors:
            continue
        tokens[currency.code] = (frontends.get(address, address), currency.decimals)
    return ChainTargets(module or next(iter(config.spender_modules)), config.settlement, tokens)


def _sender(settings: Settings, key: Secret | None, variable: str, node: RpcNode,
            clock: Callable[[], datetime],
            on_record: Callable[[OnchainUnitOfWork, Slot, SignedTx], None] | None = None, *,
            impersonated: str | None = None) -> TransactionSender:
    """A sender signing with `key`, or (CARDPAY_TX_SIGNER=impersonate) sending as
    `impersonated` through the node's impersonation."""
    signer: Signer
    if settings.impersonate:
        if impersonated is None:
            raise RelayerNotConfigured(f"no account to impersonate for {variable}")
        signer = ImpersonatedSigner(impersonated)
    elif key is None:
        raise RelayerNotConfigured(f"{variable} is not set")
    else:
        signer = LocalSigner(key)
    return TransactionSender(node, signer, clock=clock,
                             stuck_after=settings.tx_stuck_after, on_record=on_record)


def _node(settings: Settings, rpc_url: str | None) -> RpcNode:
    url = rpc_url or settings.rpc_url
    if not url:
        raise RelayerNotConfigured("no RPC URL: set CARDPAY_RPC_URL")
    # one quick retry: a poll that fails is simply tried again by the next one
    rpc = HttpJsonRpc(url, retries=1, timeout=10.0)
    return ImpersonatingNode(rpc) if settings.impersonate else RpcNode(rpc)


def _view(node: RpcNode, to: str, function: str, selector: str,
          arguments: tuple[list[str], list[Any]], returns: list[str], refused: str,
          advice: str = "") -> tuple[Any, ...]:
    """One view call (`eth_call` at the latest block), its arguments and answer in eth-abi.
    RelayerNotConfigured in one line — `refused`, the function and the cause, `advice` — when
    the node or the contract does not answer so."""
    call = "0x" + selector + abi_encode(*arguments).hex()
    try:
        answer = str(node.call(to, call))
        return tuple(abi_decode(returns, bytes.fromhex(answer.removeprefix("0x"))))
    except (ValueError, DecodingError, CardpayError, ListenerError) as exc:
        raise RelayerNotConfigured(f"{refused} ({function}: {exc}){advice}") from None


MODULES_PAGE_SELECTOR = "cc2f8452"
"""getModulesPaginated(address start, uint256 pageSize) on a Zodiac module (or a Safe): who may
call the Spender module's `spend`."""
SENTINEL_MODULES = "0x0000000000000000000000000000000000000001"
"""Zodiac's list head: `getModulesPaginated(SENTINEL_MODULES, n)` starts at the first module."""


def first_enabled_module(node: RpcNode, spender_module: str) -> str:
    """The first enabled module of `spender_module` (`getModulesPaginated(SENTINEL, 10)`, its
    answer `(address[] array, address next)` decoded by eth-abi), lowercase, as the node says: an
    account its `spend` accepts without a signature (Zodiac's `moduleOnly`).
    RelayerNotConfigured, in one line, when it has none or does not answer."""
    found, _ = _view(node, spender_module, "getModulesPaginated", MODULES_PAGE_SELECTOR,
                     (["address", "uint256"], [SENTINEL_MODULES, 10]), ["address[]", "address"],
                     f"the Spender module {spender_module} does not list its modules",
                     "; set CARDPAY_RELAYER_ADDRESS")
    modules = [str(module).lower() for module in found]
    if not modules:
        raise RelayerNotConfigured(
            f"the Spender module {spender_module} has no enabled module to impersonate; "
            "set CARDPAY_RELAYER_ADDRESS")
    return modules[0]


def spend_sender_address(settings: Settings, config: ChainConfig, node: RpcNode) -> str:
    """Whom spends are sent as under impersonation: CARDPAY_RELAYER_ADDRESS, else the first
    enabled module of the preset's Spender module read from the chain. On mainnet the delegate
    EOA sends `spend` with an enabled module's EIP-712 signature, which nobody here can make;
    a call straight from an enabled module passes `moduleOnly` with no signature, and on a fork
    that module can be impersonated (docs/adr/0019)."""
    if settings.relayer_address:
        return settings.relayer_address
    return first_enabled_module(node, chain_targets(config).spender_module)


GET_OWNERS_SELECTOR = "a0e67e2b"
"""getOwners() on a Safe: its owners, in the order its owner list keeps them."""
GET_THRESHOLD_SELECTOR = "e75235b8"
"""getThreshold() on a Safe: how many owners must sign a transaction."""
IS_OWNER_SELECTOR = "2f54bf6e"
"""isOwner(address) on a Safe."""
SAFE_THRESHOLD_SLOT = 4
"""Where Safe v1.3.0 keeps its threshold (singleton, modules, owners, ownerCount, threshold)."""


def _safe_read(node: RpcNode, safe: str, function: str, selector: str,
               arguments: tuple[list[str], list[Any]], returns: str) -> Any:
    """One value read from the settlement Safe (`_view`)."""
    return _view(node, safe, function, selector, arguments, [returns],
                 f"the settlement account {safe} does not answer as a Safe does",
                 ": refunds are sent through a Safe v1.3.0")[0]


def settlement_sender_address(settings: Settings, config: ChainConfig, node: RpcNode) -> str:
    """Whom refunds are sent as under impersonation: CARDPAY_SETTLEMENT_SENDER, else the
    settlement Safe's first owner (`getOwners`) as the node says. RelayerNotConfigured when it
    is not an owner."""
    safe = config.settlement
    sender = settings.settlement_sender
    if not sender:
        owners = _safe_read(node, safe, "getOwners", GET_OWNERS_SELECTOR, ([], []), "address[]")
        if not owners:
            raise RelayerNotConfigured(f"the settlement Safe {safe} has no owner to impersonate; "
                                       "set CARDPAY_SETTLEMENT_SENDER")
        return str(owners[0]).lower()
    if not _safe_read(node, safe, "isOwner", IS_OWNER_SELECTOR, (["address"], [sender]), "bool"):
        raise RelayerNotConfigured(f"CARDPAY_SETTLEMENT_SENDER {sender} is not an owner of the "
                                   f"settlement Safe {safe}")
    return sender.lower()


def _threshold(node: RpcNode, safe: str) -> int:
    return int(_safe_read(node, safe, "getThreshold", GET_THRESHOLD_SELECTOR, ([], []),
                          "uint256"))


def one_owner_signs(node: ImpersonatingNode, safe: str) -> int:
    """On a fork, where nobody holds the other owners' keys: make the settlement Safe take one
    owner's signature, its threshold set to 1 in its storage (`anvil_setStorageAt`, slot 4 of
    Safe v1.3.0) and read back. Returns the threshold it had (logged when it changes)."""
    had = _threshold(node, safe)
    if had != 1:
        try:
            node.set_storage(safe, SAFE_THRESHOLD_SLOT, 1)
        except (CardpayError, ListenerError) as exc:
            raise RelayerNotConfigured(f"cannot set the settlement Safe's threshold on this "
                                       f"node: {exc}") from None
        now = _threshold(node, safe)
        if now != 1:
            raise RelayerNotConfigured(
                f"the settlement Safe {safe} still has threshold {now} after setting slot "
                f"{SAFE_THRESHOLD_SLOT}: not Safe v1.3.0's storage layout")
        log.warning("the settlement Safe %s had threshold %d on this fork: set to 1, so that "
                    "one impersonated owner executes refunds", safe, had)
    return had


def build_spend_relayer(settings: Settings, engine: Engine, config: ChainConfig,
                        answers: EffectAnswers, *, rpc_url: str | None = None,
                        batch: int = 50, clock: Callable[[], datetime] = _now) -> SpendRelayer:
    node = _node(settings, rpc_url)
    chain_id = config.chain_id

    def link(uow: OnchainUnitOfWork, slot: Slot, tx: SignedTx) -> None:
        link_spend(uow, slot, tx, chain_id=chain_id)

    impersonated = spend_sender_address(settings, config, node) if settings.impersonate else None
    sender = _sender(settings, settings.relayer_key, "CARDPAY_RELAYER_KEY", node, clock, link,
                     impersonated=impersonated)
    return SpendRelayer(onchain_uow_factory(engine), sender, answers, chain_targets(config),
                        batch=batch)


def build_refund_sender(settings: Settings, engine: Engine, config: ChainConfig,
                        answers: EffectAnswers, *, rpc_url: str | None = None,
                        batch: int = 50, clock: Callable[[], datetime] = _now) -> RefundSender:
    node = _node(settings, rpc_url)
    impersonated = None
    if isinstance(node, ImpersonatingNode):
        impersonated = settlement_sender_address(settings, config, node)
        one_owner_signs(node, config.settlement)
    sender = _sender(settings, settings.settlement_key, "CARDPAY_SETTLEMENT_KEY", node, clock,
                     impersonated=impersonated)
    return RefundSender(onchain_uow_factory(engine), sender, answers, chain_targets(config),
                        batch=batch)

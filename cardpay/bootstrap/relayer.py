"""Composition root of the on-chain effect adapters: the spend relayer and the refund sender.

Each is built from the settings (its key, the stuck timeout), the database and the node, and
answers through the saga runner. The saga worker calls their `run_once()` in its loop; each
call claims what is pending, signs and records it, commits, broadcasts, and answers what was
mined.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

from cardpay.errors import CardpayError
from cardpay.handlers.onchain import (
    ChainTargets,
    EffectAnswers,
    OnchainUnitOfWork,
    RefundSender,
    SignedTx,
    Slot,
    SpendRelayer,
    TransactionSender,
    link_spend,
)
from cardpay.onchain.sender import LocalSigner, RpcNode
from cardpay.postgres.uow import onchain_uow_factory
from cardpay.settings import Secret, Settings
from listener.presets import ChainConfig
from listener.rpc import HttpJsonRpc


class RelayerNotConfigured(CardpayError):
    """A key, the RPC URL or the chain's addresses are missing."""


def _now() -> datetime:
    return datetime.now(UTC)


def chain_targets(config: ChainConfig) -> ChainTargets:
    """Where spends and refunds go, from the chain preset: its one Spender module, its
    settlement account, and per currency the address card spends use (the v1 frontend of a
    token that has one, as Gnosis Pay spends EURe)."""
    if len(config.spender_modules) != 1:
        raise RelayerNotConfigured(
            f"the {config.name} preset names {len(config.spender_modules)} Spender modules; "
            "the relayer needs exactly one")
    frontends = {canonical: mirror for mirror, canonical in config.mirrors.items()}
    tokens: dict[str, tuple[str, int]] = {}
    for address, currency in config.tokens.items():
        if address in config.mirrors:
            continue
        tokens[currency.code] = (frontends.get(address, address), currency.decimals)
    return ChainTargets(next(iter(config.spender_modules)), config.settlement, tokens)


def _sender(settings: Settings, key: Secret | None, variable: str, node: RpcNode,
            clock: Callable[[], datetime],
            on_record: Callable[[OnchainUnitOfWork, Slot, SignedTx], None] | None = None
            ) -> TransactionSender:
    if key is None:
        raise RelayerNotConfigured(f"{variable} is not set")
    return TransactionSender(node, LocalSigner(key), clock=clock,
                             stuck_after=settings.tx_stuck_after, on_record=on_record)


def _node(settings: Settings, rpc_url: str | None) -> RpcNode:
    url = rpc_url or settings.rpc_url
    if not url:
        raise RelayerNotConfigured("no RPC URL: set CARDPAY_RPC_URL")
    # one quick retry: a poll that fails is simply tried again by the next one
    return RpcNode(HttpJsonRpc(url, retries=1, timeout=10.0))


def build_spend_relayer(settings: Settings, engine: Engine, config: ChainConfig,
                        answers: EffectAnswers, *, rpc_url: str | None = None,
                        batch: int = 50, clock: Callable[[], datetime] = _now) -> SpendRelayer:
    node = _node(settings, rpc_url)
    chain_id = config.chain_id

    def link(uow: OnchainUnitOfWork, slot: Slot, tx: SignedTx) -> None:
        link_spend(uow, slot, tx, chain_id=chain_id)

    sender = _sender(settings, settings.relayer_key, "CARDPAY_RELAYER_KEY", node, clock, link)
    return SpendRelayer(onchain_uow_factory(engine), sender, answers, chain_targets(config),
                        batch=batch)


def build_refund_sender(settings: Settings, engine: Engine, config: ChainConfig,
                        answers: EffectAnswers, *, rpc_url: str | None = None,
                        batch: int = 50, clock: Callable[[], datetime] = _now) -> RefundSender:
    node = _node(settings, rpc_url)
    sender = _sender(settings, settings.settlement_key, "CARDPAY_SETTLEMENT_KEY", node, clock)
    return RefundSender(onchain_uow_factory(engine), sender, answers, chain_targets(config),
                        batch=batch)

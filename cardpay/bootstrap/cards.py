"""The card registry's composition root: registering cards reads the node through JSON-RPC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from cardpay.handlers.cards import register_card
from cardpay.handlers.ports import Card, CardExists, ChainReading
from cardpay.onchain.readings import RpcChainReader
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from listener.presets import ChainConfig, local_config
from listener.rpc import HttpJsonRpc


@dataclass(frozen=True)
class Registered:
    card: Card
    reading: ChainReading | None
    """None: the card was already registered (nothing read, nothing changed)."""


def allowance_token(config: ChainConfig, token: str) -> str:
    """The address the Roles module scopes for `token`: its v1 frontend if it has one (EURe and
    GBPe are spent through v1, as on mainnet), else the token itself."""
    for mirror, canonical in config.mirrors.items():
        if canonical == token.lower():
            return mirror
    return token.lower()


def register_cards(settings: Settings, engine: Engine, config: ChainConfig, rpc_url: str,
                   cards: Sequence[Card], *, skip_existing: bool = False) -> list[Registered]:
    rpc = HttpJsonRpc(rpc_url, retries=2, timeout=10.0)
    reader = RpcChainReader(rpc, confirmations=settings.confirmations)
    uow = unit_of_work_factory(engine, settings.outbox_topic)
    done: list[Registered] = []
    try:
        for card in cards:
            try:
                reading = register_card(uow, reader, card, listener=settings.listener_name,
                                        allowance_token=allowance_token(config, card.token))
            except CardExists:
                if not skip_existing:
                    raise
                reading = None
            done.append(Registered(card, reading))
    finally:
        rpc.close()
    return done


def local_cards(deployment: Mapping[str, Any]) -> tuple[str, list[Card]]:
    """The cards of a local deployment (`cardpay deploy`, `cardpay run`): one per cardholder
    Safe, ids local-0000, local-0001, ..., in EURe (a Gnosis Pay Safe spends one token), with
    its Roles module so the daily allowance is followed. Returns the token's symbol too."""
    config = local_config(dict(deployment))
    symbol = "EURe" if "EURe" in deployment["tokens"] else next(iter(deployment["tokens"]))
    token = str(deployment["tokens"][symbol]["address"]).lower()
    return symbol, [Card(f"local-{i:04d}", str(safe).lower(), token, config.tokens[token],
                         roles_module=str(module).lower())
                    for i, (safe, module) in enumerate(zip(deployment["cardholders"],
                                                           deployment["roles_modules"],
                                                           strict=True))]

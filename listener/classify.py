"""Classify every token transfer touching the issuer or a cardholder (observer mode and live).

Classes follow Gnosis' own analytics (gnosis-pay-onchain.md §3): a transfer into the settlement
account is a card spend; out of it, a refund/reversal; GNO from the cashback Safe, cashback; from
the referral Safe, a referral reward; a mint, a fiat top-up; a burn, an off-ramp; anything else,
other. The EURe/GBPe v1 "frontend" repeats the v2 Transfer in the same transaction: it is dropped
(counted once).
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from listener.decode import Spend, Transfer
from listener.logs import Log
from listener.presets import ZERO, ChainConfig


class Kind(enum.StrEnum):
    CARD_SPEND = "card_spend"
    REFUND = "refund"
    CASHBACK = "cashback"
    REFERRAL = "referral"
    TOP_UP = "top_up"
    OFF_RAMP = "off_ramp"
    OTHER = "other"


class Activity(NamedTuple):
    log: Log
    kind: Kind
    token: str
    """Canonical token address (the v2 proxy for EURe/GBPe)."""
    symbol: str
    sender: str
    recipient: str
    amount: int
    cardholder: str | None
    block_time: datetime | None = None


def drop_mirrors(transfers: Sequence[Transfer], config: ChainConfig) -> list[Transfer]:
    """Remove each v1-frontend Transfer that repeats a v2 Transfer of the same transaction.

    A v1 Transfer with no v2 twin (before 2024-08-25 only v1 existed) is kept as the token's.
    """
    if not config.mirrors:
        return list(transfers)
    twins: dict[tuple[str, str, str, str, int], int] = {}
    for t in transfers:
        if t.token not in config.mirrors:
            key = (t.log.tx_hash, t.token, t.sender, t.recipient, t.value)
            twins[key] = twins.get(key, 0) + 1
    kept = []
    for t in transfers:
        if t.token in config.mirrors:
            key = (t.log.tx_hash, config.mirrors[t.token], t.sender, t.recipient, t.value)
            if twins.get(key, 0) > 0:
                twins[key] -= 1
                continue
        kept.append(t)
    return kept


def _kind(t: Transfer, config: ChainConfig) -> tuple[Kind, str | None]:
    if t.recipient == config.settlement:
        if t.sender in config.operational_wallets or t.sender == ZERO:
            return Kind.OTHER, None
        return Kind.CARD_SPEND, t.sender
    if t.sender == config.settlement:
        if t.recipient in config.operational_wallets or t.recipient == ZERO:
            return Kind.OTHER, None
        return Kind.REFUND, t.recipient
    if t.sender in config.cashback_senders:
        return Kind.CASHBACK, t.recipient
    if t.sender in config.referral_senders:
        return Kind.REFERRAL, t.recipient
    if t.sender in config.ignored_senders:
        return Kind.OTHER, None
    if t.sender == ZERO:
        return Kind.TOP_UP, None
    if t.recipient == ZERO:
        return Kind.OFF_RAMP, None
    return Kind.OTHER, None


def classify(transfers: Iterable[Transfer], config: ChainConfig) -> list[Activity]:
    """One `Activity` per transfer of a configured token (mirrors already dropped)."""
    out = []
    for t in transfers:
        currency = config.tokens.get(t.token)
        if currency is None:
            continue
        kind, cardholder = _kind(t, config)
        out.append(Activity(t.log, kind, config.canonical(t.token), currency.code, t.sender,
                            t.recipient, t.value, cardholder))
    return out


def _log_index(t: Transfer) -> int:
    return t.log.log_index


def spend_cardholders(
    spends: Sequence[Spend], transfers: Sequence[Transfer], config: ChainConfig
) -> list[str | None]:
    """The Safe behind each Spend: the sender of its token Transfer in the same transaction.

    The spender module makes the transfer and then emits Spend, so a Spend's Transfer is the
    nearest one before it (same token, receiver and amount) not already taken by an earlier Spend:
    a transaction may hold many spends, some of equal amounts from different Safes. Spend's own
    `account` is the Safe's Roles module, not the Safe, so it is never used as the cardholder;
    None when no matching Transfer was read.
    """
    # candidates per (transaction, token, receiver, amount), in log order; a Transfer taken by
    # a Spend leaves its list, so the nearest one before a Spend is found by bisection: a
    # transaction of 1,000 spends was a million comparisons when every Spend scanned them all
    candidates: dict[tuple[str, str, str, int], list[Transfer]] = {}
    for t in transfers:
        candidates.setdefault((t.log.tx_hash, config.canonical(t.token), t.recipient, t.value),
                              []).append(t)
    for group in candidates.values():
        group.sort(key=_log_index)
    out: list[str | None] = []
    for spend in spends:
        found = candidates.get((spend.log.tx_hash, config.canonical(spend.asset), spend.receiver,
                                spend.amount))
        best: Transfer | None = None
        if found:
            before = bisect_left(found, spend.log.log_index, key=_log_index)
            if before:
                best = found.pop(before - 1)
        out.append(None if best is None else best.sender)
    return out

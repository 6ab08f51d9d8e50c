"""Decoded logs → domain commands and classified activity (the anti-corruption layer).

A `Spend` log becomes `ConfirmSpend` for the payment it opens; its cardholder is the Safe that sent
the matching token Transfer. Every transfer of a configured token is classified (`Activity`); a
refund, when refunds are matched (not in observer mode), also becomes `RecordSettlementTransfer`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from domain.authorization import Allowance
from domain.commands import ConfirmSpend, RecordSettlementTransfer
from domain.events import ChainEvidence
from domain.money import Money
from listener.classify import Activity, Kind, classify, drop_mirrors, spend_cardholders
from listener.decode import (
    SPENDING_ALLOWANCE_KEY,
    ConsumeAllowance,
    SetAllowance,
    Spend,
    Transfer,
    decode,
)
from listener.errors import DecodeError
from listener.logs import Log
from listener.ports import AllowanceChange, ChainCommand, Rejected
from listener.presets import ChainConfig

PAYMENT_NAMESPACE = uuid.UUID("6f1d9c1e-4b7a-5e2f-9a51-2c7c0f3e8d10")

__all__ = ["ChainConfig", "Translation", "command_id", "payment_id_for_spend", "translate"]


@dataclass
class Translation:
    commands: list[ChainCommand] = field(default_factory=list)
    activity: list[Activity] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    allowances: list[AllowanceChange] = field(default_factory=list)


def payment_id_for_spend(chain_id: int, tx_hash: str, ordinal: int = 0) -> str:
    """Stable across re-delivery and reorgs: the spend's transaction and its ordinal among the
    transaction's Spend logs — not the block, nor the block-wide log index, which both change
    when a reorg moves the transaction into another block."""
    return str(uuid.uuid5(PAYMENT_NAMESPACE, f"{chain_id}:{tx_hash}:{ordinal}"))


def command_id(chain_id: int, log: Log) -> str:
    return f"chain:{chain_id}:{log.key}"


def evidence(chain_id: int, log: Log) -> ChainEvidence:
    return ChainEvidence(
        chain_id=chain_id, block_number=log.block_number, block_hash=log.block_hash,
        tx_hash=log.tx_hash, log_index=log.log_index,
    )


def raw_log(log: Log) -> dict[str, object]:
    return {
        "address": log.address, "topics": list(log.topics), "data": log.data,
        "blockNumber": hex(log.block_number), "blockHash": log.block_hash,
        "transactionHash": log.tx_hash, "transactionIndex": hex(log.tx_index),
        "logIndex": hex(log.log_index), "removed": log.removed,
    }


def _spend_problem(spend: Spend, cardholder: str | None, config: ChainConfig) -> str | None:
    if spend.module not in config.spender_modules or spend.asset not in config.tokens:
        return f"Spend from {spend.module} of token {spend.asset}: not configured"
    if spend.receiver != config.settlement:
        return f"Spend to {spend.receiver}, not the settlement account {config.settlement}"
    if cardholder is None:
        return ("Spend without its token Transfer to the settlement account in the same "
                "transaction: cardholder unknown")
    return None


def translate(
    logs: Iterable[Log], config: ChainConfig, timestamps: Mapping[int, datetime]
) -> Translation:
    """`timestamps` maps block number → block time (UTC) for every block the logs are in."""
    out = Translation()
    spends: list[Spend] = []
    transfers: list[Transfer] = []
    allowance_logs: list[ConsumeAllowance | SetAllowance] = []
    for log in logs:
        try:
            item = decode(log)
        except DecodeError as exc:
            out.rejected.append(Rejected(command_id(config.chain_id, log), str(exc), raw_log(log)))
            continue
        if isinstance(item, Spend):
            spends.append(item)
        elif isinstance(item, Transfer):
            transfers.append(item)
        elif item.key == SPENDING_ALLOWANCE_KEY:  # other allowances are not the card's limit
            allowance_logs.append(item)
    out.allowances = allowance_changes(allowance_logs, spends, config, timestamps)
    transfers = drop_mirrors(transfers, config)
    ordinals: dict[str, int] = {}
    spends.sort(key=lambda s: (s.log.block_number, s.log.log_index))
    for spend, cardholder in zip(spends, spend_cardholders(spends, transfers, config),
                                 strict=True):
        ordinal = ordinals.get(spend.log.tx_hash, 0)
        if spend.module in config.spender_modules:  # what the live filter returns, no more
            ordinals[spend.log.tx_hash] = ordinal + 1
        reason = _spend_problem(spend, cardholder, config)
        if reason is not None:
            out.rejected.append(Rejected(command_id(config.chain_id, spend.log), reason,
                                         raw_log(spend.log)))
            continue
        assert cardholder is not None  # _spend_problem refuses a Spend without one
        out.commands.append(ConfirmSpend(
            command_id=command_id(config.chain_id, spend.log),
            payment_id=payment_id_for_spend(config.chain_id, spend.log.tx_hash, ordinal),
            at=timestamps[spend.log.block_number],
            account=cardholder,
            amount=Money(spend.amount, config.tokens[spend.asset]),
            evidence=evidence(config.chain_id, spend.log),
        ))
    out.activity = [
        act._replace(block_time=timestamps[act.log.block_number])
        for act in classify(transfers, config)
    ]
    if config.match_refunds:
        for act in out.activity:
            if act.kind is Kind.REFUND and act.log.block_number >= config.refunds_matched_from:
                out.commands.append(RecordSettlementTransfer(
                    command_id=command_id(config.chain_id, act.log),
                    at=timestamps[act.log.block_number], recipient=act.recipient,
                    token=act.token, amount=Money(act.amount, config.tokens[act.token]),
                    evidence=evidence(config.chain_id, act.log),
                ))
    out.commands.sort(key=lambda c: (c.evidence.block_number, c.evidence.log_index))
    return out


def allowance_changes(
    items: Iterable[ConsumeAllowance | SetAllowance], spends: Iterable[Spend],
    config: ChainConfig, timestamps: Mapping[int, datetime],
) -> list[AllowanceChange]:
    """Allowance events as `AllowanceChange`s, in chain order.

    ConsumeAllowance names no token: it is paired with the Spend it paid for — the nearest Spend
    after it in the same transaction whose `account` is the emitting Roles module and whose amount
    is the one consumed (the Roles module consumes, then the spender module emits Spend).
    """
    # Candidates by (transaction, module, amount), each list in log order: a lookup, not a scan
    # of the transaction's spends (a batch of 1,000 spends in one transaction made the scan
    # quadratic: issue 11's dense workload).
    by_key: dict[tuple[str, str, int], list[Spend]] = {}
    for spend in sorted(spends, key=lambda s: s.log.log_index):
        by_key.setdefault((spend.log.tx_hash, spend.account, spend.amount), []).append(spend)
    taken: set[tuple[str, int]] = set()
    out: list[AllowanceChange] = []
    for item in sorted(items, key=lambda i: (i.log.block_number, i.log.log_index)):
        log = item.log
        stamp = int(timestamps[log.block_number].timestamp())
        if isinstance(item, SetAllowance):
            out.append(AllowanceChange(
                log.address, log.block_number, log.block_hash, log.log_index, stamp,
                set_to=Allowance(item.balance, item.max_refill, item.refill, item.period,
                                 item.timestamp)))
            continue
        paid = next((s for s in by_key.get((log.tx_hash, log.address, item.consumed), ())
                     if s.log.log_index > log.log_index
                     and (log.tx_hash, s.log.log_index) not in taken), None)
        if paid is not None:
            taken.add((log.tx_hash, paid.log.log_index))
        out.append(AllowanceChange(
            log.address, log.block_number, log.block_hash, log.log_index, stamp,
            token=None if paid is None else config.canonical(paid.asset),
            consumed=item.consumed, new_balance=item.new_balance))
    return out

"""Decoded logs → domain commands (the anti-corruption layer between the chain and the model).

A `Spend` log becomes `ConfirmSpend` for the payment it opens; its cardholder is the sender of the
matching token Transfer in the same transaction. A Transfer out of the settlement account becomes
`RecordSettlementTransfer`. Transfers into the settlement account only confirm a Spend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from domain.commands import ConfirmSpend, RecordSettlementTransfer
from domain.events import ChainEvidence
from domain.money import Currency, Money
from listener.decode import Spend, Transfer, decode
from listener.errors import DecodeError
from listener.logs import Log
from listener.ports import ChainCommand, Rejected

PAYMENT_NAMESPACE = uuid.UUID("6f1d9c1e-4b7a-5e2f-9a51-2c7c0f3e8d10")


@dataclass(frozen=True)
class ChainConfig:
    chain_id: int
    settlement: str
    spender_modules: frozenset[str]
    tokens: Mapping[str, Currency]

    @property
    def log_addresses(self) -> list[str]:
        return sorted(self.spender_modules | set(self.tokens))


@dataclass
class Translation:
    commands: list[ChainCommand] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def payment_id_for_spend(chain_id: int, tx_hash: str, log_index: int) -> str:
    """Stable across re-delivery: the spend's transaction and position in it, not its block."""
    return str(uuid.uuid5(PAYMENT_NAMESPACE, f"{chain_id}:{tx_hash}:{log_index}"))


def command_id(chain_id: int, log: Log) -> str:
    return f"chain:{chain_id}:{log.key}"


def _evidence(chain_id: int, log: Log) -> ChainEvidence:
    return ChainEvidence(
        chain_id=chain_id, block_number=log.block_number, block_hash=log.block_hash,
        tx_hash=log.tx_hash, log_index=log.log_index,
    )


def translate(
    logs: Iterable[Log], config: ChainConfig, timestamps: Mapping[int, datetime]
) -> Translation:
    """`timestamps` maps block number → block time (UTC) for every block the logs are in."""
    out = Translation()
    decoded: list[Spend | Transfer] = []
    for log in logs:
        try:
            decoded.append(decode(log))
        except DecodeError as exc:
            out.rejected.append(Rejected(command_id(config.chain_id, log), str(exc), _raw(log)))
    transfers_in_tx: dict[str, list[Transfer]] = {}
    for item in decoded:
        if isinstance(item, Transfer):
            transfers_in_tx.setdefault(item.log.tx_hash, []).append(item)
    for item in decoded:
        at = timestamps[item.log.block_number]
        if isinstance(item, Spend):
            if item.asset not in config.tokens:
                reason = f"Spend of a token that is not configured: {item.asset}"
                out.rejected.append(
                    Rejected(command_id(config.chain_id, item.log), reason, _raw(item.log))
                )
                continue
            out.commands.append(_confirm_spend(item, config, transfers_in_tx, at))
        elif item.sender == config.settlement and item.token in config.tokens:
            out.commands.append(
                RecordSettlementTransfer(
                    command_id=command_id(config.chain_id, item.log), at=at,
                    recipient=item.recipient, token=item.token,
                    amount=Money(item.value, config.tokens[item.token]),
                    evidence=_evidence(config.chain_id, item.log),
                )
            )
    return out


def _confirm_spend(
    spend: Spend,
    config: ChainConfig,
    transfers_in_tx: Mapping[str, list[Transfer]],
    at: datetime,
) -> ChainCommand:
    matching = [
        t for t in transfers_in_tx.get(spend.log.tx_hash, [])
        if t.token == spend.asset and t.recipient == spend.receiver and t.value == spend.amount
    ]
    # The Safe is the Transfer's sender; Spend's `account` is the module acting for it.
    account = matching[0].sender if matching else spend.account
    return ConfirmSpend(
        command_id=command_id(config.chain_id, spend.log),
        payment_id=payment_id_for_spend(config.chain_id, spend.log.tx_hash, spend.log.log_index),
        at=at,
        account=account,
        amount=Money(spend.amount, config.tokens[spend.asset]),
        evidence=_evidence(config.chain_id, spend.log),
    )


def _raw(log: Log) -> dict[str, object]:
    return {
        "address": log.address, "topics": list(log.topics), "data": log.data,
        "blockNumber": log.block_number, "blockHash": log.block_hash,
        "transactionHash": log.tx_hash, "logIndex": log.log_index,
    }

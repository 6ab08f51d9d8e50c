"""Double-entry ledger with TigerBeetle's semantics (accounts, transfers, two-phase holds).

`model` holds the records, flags and result codes; `decide` the rules, as one pure function;
`memory` the reference ledger in memory; `chart` the chart of accounts; `units` the ledger's unit
(token base units) and its exact conversions from and to fiat. See docs/adr/0009-ledger.md.
"""

from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.decide import Decision, decide, decide_expiry
from domain.ledger.memory import Ledger
from domain.ledger.model import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    PendingStatus,
    Transfer,
    TransferFlags,
    TransferRecord,
)

__all__ = [
    "AMOUNT_MAX", "Account", "AccountFlags", "AccountKind", "ChartOfAccounts",
    "CreateAccountResult", "CreateTransferResult", "Decision", "Entry", "Ledger",
    "PendingStatus", "Transfer", "TransferFlags", "TransferRecord", "decide", "decide_expiry",
]

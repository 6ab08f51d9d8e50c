"""The chart of accounts as code: which accounts exist in each token ledger, and their flags.

One ledger per token (EURe, GBPe, USDCe); amounts are the token's base units (ADR 0009). Each
ledger has one account of every kind below except cardholder funds, of which there is one per
cardholder Safe. Ids are readable and derived, so every writer names the same account:
`<ledger>:<kind>` and `<ledger>:cardholder_funds:<safe address, lower case>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.ledger.model import Account, AccountFlags


class AccountKind(StrEnum):
    CARDHOLDER_FUNDS = "cardholder_funds"
    """What a cardholder may spend (their Safe's balance as indexed): credited by money in,
    debited by holds and clearings; may never be overdrawn."""
    SAFE_BALANCES = "safe_balances"
    """The counterpart of money coming into cardholder Safes on chain (the mirror of the chain)."""
    ONCHAIN_SETTLEMENT = "onchain_settlement"
    """Tokens in the on-chain settlement account (card spends arrive there); cannot go below 0."""
    NETWORK_PAYABLE = "network_payable"
    """What cardpay owes the card network for cleared (and held) card payments."""
    NETWORK_SETTLEMENT = "network_settlement"
    """Amounts settled with the network per settlement day (the VSS-110 net)."""
    FEES = "fees"
    """Fees and interchange earned or charged."""
    SUSPENSE = "suspense"
    """Money that arrived and cannot be placed yet (a return with no payment): an exception."""
    ROUNDING = "rounding"
    """Remainders of token amounts that are not a whole fiat minor unit (never silently lost)."""


FLAGS: dict[AccountKind, AccountFlags] = {
    AccountKind.CARDHOLDER_FUNDS: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountKind.SAFE_BALANCES: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountKind.ONCHAIN_SETTLEMENT: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountKind.NETWORK_PAYABLE: AccountFlags.NONE,
    AccountKind.NETWORK_SETTLEMENT: AccountFlags.NONE,
    AccountKind.FEES: AccountFlags.NONE,
    AccountKind.SUSPENSE: AccountFlags.NONE,
    AccountKind.ROUNDING: AccountFlags.NONE,
}
"""SAFE_BALANCES is debited by the money that came into Safes and credited by what left them, so
it can never be credited past its debits; likewise the settlement account's tokens."""


@dataclass(frozen=True, slots=True)
class ChartOfAccounts:
    """The accounts of one token ledger."""

    ledger: str

    def account_id(self, kind: AccountKind, owner: str = "") -> str:
        if kind is AccountKind.CARDHOLDER_FUNDS:
            if not owner:
                raise ValueError("cardholder funds are per Safe: give its address")
            return f"{self.ledger}:{kind.value}:{owner.lower()}"
        if owner and kind not in (AccountKind.SAFE_BALANCES, AccountKind.SUSPENSE):
            raise ValueError(f"{kind.value} is one account per ledger")
        # SAFE_BALANCES and SUSPENSE may also be kept per Safe: the mirror of that Safe's indexed
        # balance, and what the network took from it beyond its funds (its exposure)
        return f"{self.ledger}:{kind.value}:{owner.lower()}" if owner else \
            f"{self.ledger}:{kind.value}"

    def account(self, kind: AccountKind, owner: str = "") -> Account:
        """The account to pass to `create_accounts` (creating it again is a harmless EXISTS)."""
        return Account(self.account_id(kind, owner), self.ledger, kind.value, FLAGS[kind])

    def house_accounts(self) -> list[Account]:
        """Every per-ledger account (all kinds but cardholder funds)."""
        return [self.account(k) for k in AccountKind if k is not AccountKind.CARDHOLDER_FUNDS]

    def cardholder(self, safe: str) -> Account:
        return self.account(AccountKind.CARDHOLDER_FUNDS, safe)

    def safe_mirror(self, safe: str) -> Account:
        """The Safe's mirror: debited by tokens the chain shows coming into the Safe, credited
        by tokens leaving it, against the cardholder's funds."""
        return self.account(AccountKind.SAFE_BALANCES, safe)

    def exposure(self, safe: str) -> Account:
        """Suspense for one Safe: holds and clearings the network imposed beyond its funds (a
        stand-in, an over-clearing), owed by the cardholder until returns or ops settle it."""
        return self.account(AccountKind.SUSPENSE, safe)

"""The payout's ledger postings (`domain.settlement.payout_transfers`), pure: one linked chain in
the currency's token ledger, the direction by who owes whom, ids per batch and window."""

from __future__ import annotations

import pytest

from domain.ledger.model import TransferFlags
from domain.settlement import Code, payout_transfers, reversal

pytestmark = pytest.mark.unit
CENT = 10**16  # EURe base units per euro cent


def test_the_issuer_owes_interchange_and_earns_fees_in_one_chain() -> None:
    owed, fees = payout_transfers("2026-12-02:EUR", "EUR", 1, owed=1_300, fees=3)
    assert (owed.id, owed.debit_account_id, owed.credit_account_id, owed.amount) == (
        "settlement:2026-12-02:EUR:1:interchange", "EURe:network_payable",
        "EURe:network_settlement", 1_300 * CENT)
    assert (fees.id, fees.debit_account_id, fees.credit_account_id, fees.amount) == (
        "settlement:2026-12-02:EUR:1:fees", "EURe:network_settlement", "EURe:fees", 3 * CENT)
    assert owed.flags == TransferFlags.LINKED and fees.flags == TransferFlags.NONE
    assert (owed.code, fees.code, owed.ledger) == (Code.INTERCHANGE, Code.FEES, "EURe")


def test_when_the_network_owes_the_interchange_goes_the_other_way() -> None:
    back, = payout_transfers("2026-12-02:USD", "USD", 2, owed=-250, fees=0)
    assert (back.id, back.debit_account_id, back.credit_account_id, back.amount) == (
        "settlement:2026-12-02:USD:2:interchange", "USDCe:network_settlement",
        "USDCe:network_payable", 250 * 10**4)
    assert back.flags == TransferFlags.NONE


def test_a_quiet_day_posts_nothing_and_a_reversal_undoes_a_posting() -> None:
    assert payout_transfers("2026-12-02:GBP", "GBP", 1, owed=0, fees=0) == []
    posted, = payout_transfers("2026-12-02:GBP", "GBP", 1, owed=5, fees=0)
    undo = reversal(posted)
    assert (undo.id, undo.debit_account_id, undo.credit_account_id, undo.amount) == (
        f"{posted.id}:reversal", posted.credit_account_id, posted.debit_account_id,
        posted.amount)

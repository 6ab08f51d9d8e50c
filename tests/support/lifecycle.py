"""What a whole lifecycle run must end with, for the e2e tests that run one."""

from __future__ import annotations

from cardpay.bootstrap.lifecycle import LifecycleResult

CALM_DEADLINE_MS = 30_000
"""CARDPAY_AUTHORIZATION_DEADLINE_MS for the runs that check agreement, not deadlines. At 2 s a
decision slowed by a loaded 2-core machine is late by cardpay's clock (declined, nothing held)
while its answer says approved, and the simulator — which cannot see cardpay's clock — expects
the approval to live on. Late decisions and late answers have their own tests
(tests/integration/test_card_network_effects.py, the simulator's `late_answers` in
tests/e2e/test_network_simulation.py and the chaos run)."""


def assert_everything_agrees(result: LifecycleResult, *, min_spent: int) -> None:
    """The run met no error; every answer and every payment's network side is what the
    simulator's oracle expects; per currency the chain's logs equal the read model (one Spend
    log per payment spent: the read model counts payments, the chain counts logs), at least
    `min_spent` payments were spent and some refunded, no hold is left and the network is paid;
    every settlement batch is settled."""
    assert result.errors == []
    assert result.simulator_problems == [], result.simulator_problems[:5]
    assert result.mismatches == [], result.mismatches[:5]
    f = result.figures
    for symbol in ("EURe", "USDCe"):
        chain = f.chain[symbol]
        assert chain.payments > min_spent and chain.refunded > 0, (symbol, chain)
        assert f.read_model[symbol].as_json() == chain.as_json()
        assert f.ledger[symbol] == {"network_payable": 0, "pending_holds": 0}
    assert {fiat: row["statuses"] for fiat, row in f.settlement.items()} == {
        "EUR": ["settled"], "USD": ["settled"]}

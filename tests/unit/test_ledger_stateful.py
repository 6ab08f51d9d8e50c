"""The ledger state machine (tests/support/ledger_machine.py) on the in-memory unit of work."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.fakes.storage import FakeDatabase
from tests.support.ledger_machine import LedgerMachine

pytestmark = pytest.mark.unit


class FakeLedgerMachine(LedgerMachine):
    def __init__(self) -> None:
        self.make_uow = FakeDatabase().uow
        super().__init__()


FakeLedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestFakeLedger = FakeLedgerMachine.TestCase

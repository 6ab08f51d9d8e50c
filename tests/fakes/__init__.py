"""In-memory fakes of the ports, with real transaction behaviour; each passes the contract suite
that its PostgreSQL twin passes (tests/integration/test_repository_contract.py,
tests/integration/test_event_store.py)."""

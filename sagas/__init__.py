"""Saga engine and the card-payment and settlement sagas (built in a later issue; see docs/adr)."""

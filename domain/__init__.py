"""cardpay's pure model: money, the payment aggregate, its commands and events, and the ports.

Imports the standard library only (checked by import-linter).
"""

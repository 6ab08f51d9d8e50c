"""Adapters for what cardpay sends to other parties (the card network's advice endpoint)."""

"""Adapters that read from or write to the chain for the service layer's ports."""

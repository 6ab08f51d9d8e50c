"""The saga engine: instances, messages, actions, retries and compensations (pure)."""

"""Event feed consumers that maintain read models, and the finance queries over them."""

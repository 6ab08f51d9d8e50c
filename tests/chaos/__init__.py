"""A seeded chaos run of the whole stack (issue 10): `python -m tests.chaos --seed S --duration D`."""

"""The `cardpay` command line: one module per command group, assembled by `main`."""

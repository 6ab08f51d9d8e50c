"""The CLI's error family: what a user did wrong or what is unreachable, said in one line.

A command raises `UsageError` (exit status 2: a wrong option or setting) or `CommandFailed`
(exit status 1: a service unreachable, a check that failed); `cardpay.cli.main` prints
`cardpay <command>: <message>` and exits with the status. A traceback only with `--debug`.
"""

from __future__ import annotations

from cardpay.errors import CardpayError


class CliError(CardpayError):
    """One line for the user: what is wrong and what to do."""

    status = 1


class UsageError(CliError):
    """Bad usage: an option, argument or setting the command cannot accept."""

    status = 2


class CommandFailed(CliError):
    """The command could not do its job (a service unreachable, a check that failed...)."""

    status = 1

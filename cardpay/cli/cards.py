"""`cardpay cards add|list|freeze|unfreeze|close`: the card registry.

`add` reads the Safe's token balance once with `balanceOf` (and the Roles module's allowance),
at the block the listener has reached; from then on the listener moves it with every indexed
transfer, and an authorization never asks the node.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import non_negative_int, positive_int
from cardpay.cli.output import Column, Record, add_format_options, emit
from cardpay.settings import Settings
from domain.authorization import CardStatus

STATUS_COMMANDS = {"freeze": CardStatus.FROZEN, "unfreeze": CardStatus.ACTIVE,
                   "close": CardStatus.CLOSED}


def mcc(text: str) -> int:
    value = non_negative_int(text)
    if value > 9999:
        raise argparse.ArgumentTypeError(f"an MCC has 4 digits, got {value}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("cards", help="register cards and freeze, unfreeze or close them",
                            description=__doc__)
    actions = parser.add_subparsers(dest="cards_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", help="register a card on a Safe (reads its balance once from the node)",
        description="Register CARD_ID spending --token from the Safe --safe. The Safe's "
        "balance (and its Roles module's daily allowance) is read once from the node at the "
        "block the listener has reached; the listener keeps it current from then on.")
    add.add_argument("card_id", metavar="CARD_ID",
                     help="the card's id, as the card network's messages name it")
    add.add_argument("--safe", required=True, help="the cardholder's Safe address")
    add.add_argument("--token", required=True,
                     help="the card's token: a symbol of the preset (EURe, USDCe) or an address")
    add.add_argument("--roles-module", default=None,
                     help="the Safe's Roles module, for the daily allowance (local preset: "
                     "found in the deployment file)")
    add.add_argument("--block-mcc", type=mcc, action="append", default=[], metavar="MCC",
                     help="decline this merchant category (repeatable)")
    add.add_argument("--velocity-limit", type=positive_int, default=None, metavar="N",
                     help="at most N authorizations per --velocity-window (default: no limit)")
    add.add_argument("--velocity-window", type=positive_int, default=3600, metavar="SECONDS",
                     help="the velocity window in seconds (default 3600)")
    add.add_argument("--preset", choices=["gnosis", "local"], default="local",
                     help="token addresses: gnosis or local (default; from --deployment)")
    add.add_argument("--deployment", type=Path, default=None,
                     help="local preset file (default $CARDPAY_DATA_DIR/local-deployment.json)")
    add.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    add.set_defaults(run=add_command)
    listing = actions.add_parser("list", help="the cards with their indexed balances")
    add_format_options(listing)
    listing.set_defaults(run=list_command)
    for action, status in STATUS_COMMANDS.items():
        change = actions.add_parser(action, help=f"make a card {status.value}"
                                    + (" (final)" if status is CardStatus.CLOSED else ""))
        change.add_argument("card_id", metavar="CARD_ID", help="the card's id")
        change.set_defaults(run=status_command)


def _address(text: str, option: str) -> str:
    body = text.lower().removeprefix("0x")
    if len(body) != 40 or any(ch not in "0123456789abcdef" for ch in body):
        raise UsageError(f"{option} {text!r} is not an address (0x and 40 hex digits)")
    return "0x" + body


def _token(config: Any, text: str) -> str:
    """The canonical token address for a symbol or an address of the preset."""
    if text.lower().startswith("0x"):
        address = config.canonical(_address(text, "--token"))
        if address not in config.tokens:
            raise UsageError(f"--token {text} is not a token of the {config.name} preset")
        return str(address)
    found = {config.canonical(a) for a, c in config.tokens.items() if c.code.lower() == text.lower()}
    if len(found) != 1:
        known = ", ".join(sorted({c.code for c in config.tokens.values()}))
        raise UsageError(f"--token {text!r} is not one token of the {config.name} preset "
                         f"(known: {known})")
    return str(found.pop())


def _roles_module(settings: Settings, args: argparse.Namespace, safe: str) -> str | None:
    if args.roles_module:
        return _address(args.roles_module, "--roles-module")
    if args.preset != "local":
        return None
    from cardpay.cli.chain import deployment_file

    try:
        data = json.loads(deployment_file(settings, args.deployment).read_text())
        safes = [str(s).lower() for s in data.get("cardholders", [])]
        modules = [str(m).lower() for m in data.get("roles_modules", [])]
        return modules[safes.index(safe)] if len(modules) == len(safes) else None
    except (OSError, ValueError):
        return None


def add_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.cards import register_cards
    from cardpay.cli.chain import _rpc_url, chain_preset
    from cardpay.handlers.cards import RegistrationRaced
    from cardpay.handlers.ports import Card, CardExists
    from cardpay.onchain.readings import ChainReadFailed

    config = chain_preset(settings, args.preset, args.deployment)
    url = _rpc_url(settings, args.rpc_url)
    safe = _address(args.safe, "--safe")
    token = _token(config, args.token)
    card = Card(args.card_id, safe, token, config.tokens[token], CardStatus.ACTIVE,
                _roles_module(settings, args, safe), frozenset(args.block_mcc),
                args.velocity_limit, timedelta(seconds=args.velocity_window))
    with database(settings) as engine:
        try:
            [done] = register_cards(settings, engine, config, url, [card])
        except CardExists as exc:
            raise CommandFailed(str(exc)) from None
        except (ChainReadFailed, RegistrationRaced) as exc:
            raise CommandFailed(str(exc)) from None
    reading = done.reading
    assert reading is not None
    from cardpay.records import amount_text

    allowance = "" if reading.allowance is None else \
        f", daily allowance left {amount_text(reading.allowance.balance, card.currency.decimals)}"
    print(f"card {card.card_id} registered on Safe {safe}: balance "
          f"{amount_text(reading.balance, card.currency.decimals)} {card.currency.code} at block "
          f"{reading.block_number}{allowance}")
    return 0


COLUMNS = [
    Column("card_id", "card"),
    Column("status", "status"),
    Column("currency", "currency"),
    Column("balance", "balance", "right", render=lambda r: _amount(r, "balance")),
    Column("allowance_left", "allowance left", "right",
           render=lambda r: _amount(r, "allowance_left")),
    Column("as_of_block", "as of block", "right"),
    Column("safe", "safe"),
    Column("token", "token"),
    Column("blocked_mccs", "blocked MCCs",
           render=lambda r: ",".join(map(str, r["blocked_mccs"])) or "-"),
    Column("velocity_limit", "velocity", render=lambda r: "-" if r["velocity_limit"] is None
           else f"{r['velocity_limit']}/{r['velocity_window_seconds']}s"),
    Column("decimals", "decimals", "right"),
    Column("velocity_window_seconds", "window s", "right"),
]
"""JSON and CSV give amounts as strings of base units next to `decimals`."""


def _amount(record: Record, key: str) -> str:
    from cardpay.records import amount_text

    return amount_text(record[key], record["decimals"])


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, unit_of_work

    now = datetime.now(UTC)
    records: list[Record] = []
    with database(settings) as engine, unit_of_work(settings, engine)() as uow:
        for card in uow.cards.all():
            balance = uow.cards.balance(card.safe, card.token)
            allowance = uow.cards.allowance(card.safe, card.token) if card.roles_module else None
            records.append({
                "card_id": card.card_id, "status": card.status.value,
                "currency": card.currency.code, "decimals": card.currency.decimals,
                "balance": None if balance is None else str(balance.balance),
                "allowance_left": None if allowance is None else str(allowance.remaining(now)),
                "as_of_block": None if balance is None else balance.as_of_block,
                "safe": card.safe, "token": card.token, "roles_module": card.roles_module,
                "blocked_mccs": sorted(card.blocked_mccs), "velocity_limit": card.velocity_limit,
                "velocity_window_seconds": int(card.velocity_window.total_seconds()),
            })
    emit(args.format, COLUMNS, records, empty="(no cards yet: `cardpay cards add`)")
    return 0


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, unit_of_work
    from cardpay.handlers.cards import CardNotFound, set_card_status
    from domain.authorization import StatusChangeRefused

    with database(settings) as engine:
        try:
            card = set_card_status(unit_of_work(settings, engine), args.card_id,
                                   STATUS_COMMANDS[args.cards_command])
        except CardNotFound as exc:
            raise CommandFailed(str(exc)) from None
        except StatusChangeRefused as exc:
            raise CommandFailed(f"card {args.card_id}: {exc}") from None
    print(f"card {card.card_id} is {card.status.value}")
    return 0

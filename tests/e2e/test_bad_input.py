"""Every mistake a user can make at the command line ends as one line on stderr that says what is
wrong and what to do, with a known exit status and no traceback (unless --debug).

Each case runs `python -m cardpay.cli.main ...` as a process, as a user would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_process import ctrl_c_default
from tests.support.cli import message_lines, run_cardpay

pytestmark = pytest.mark.e2e

UNREACHABLE = "postgresql://cardpay:hunter2@127.0.0.1:1/cardpay"


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    status: int
    says: tuple[str, ...]
    """Fragments the one stderr line must contain."""
    env: dict[str, str] = field(default_factory=dict)
    never: tuple[str, ...] = ()
    """Fragments that must not appear anywhere in the output (a password)."""


CASES = [
    Case("malformed database URL scheme", ("status",), 2,
         ("CARDPAY_DATABASE_URL must start with postgresql://", "expected postgresql://USER"),
         env={"CARDPAY_DATABASE_URL": "mysql://cardpay@db/cardpay"}),
    Case("database URL that is not a URL", ("db", "upgrade"), 2,
         ("CARDPAY_DATABASE_URL is not a URL",),
         env={"CARDPAY_DATABASE_URL": "localhost:5432"}),
    Case("database URL with a bad port", ("payments",), 2,
         ("CARDPAY_DATABASE_URL is malformed",),
         env={"CARDPAY_DATABASE_URL": "postgresql://u:hunter2@db:fivefour/cardpay"},
         never=("hunter2",)),
    Case("unreachable database", ("db", "upgrade"), 1,
         ("cannot connect to PostgreSQL at 127.0.0.1:1/cardpay: Connection refused",
          "check CARDPAY_DATABASE_URL"),
         env={"CARDPAY_DATABASE_URL": UNREACHABLE}, never=("hunter2",)),
    Case("unreachable database, read command", ("status", "--json"), 1,
         ("cannot connect to PostgreSQL at 127.0.0.1:1/cardpay",),
         env={"CARDPAY_DATABASE_URL": UNREACHABLE}, never=("hunter2",)),
    Case("setting that is not an integer", ("db", "upgrade"), 2,
         ("CARDPAY_CONFIRMATIONS must be an integer, got 'two'",),
         env={"CARDPAY_CONFIRMATIONS": "two"}),
    Case("negative setting", ("status",), 2,
         ("CARDPAY_CONFIRMATIONS must be 0 or more, got -3",),
         env={"CARDPAY_CONFIRMATIONS": "-3"}),
    Case("zero block range", ("status",), 2,
         ("CARDPAY_MAX_BLOCK_RANGE must be at least 1, got 0",),
         env={"CARDPAY_MAX_BLOCK_RANGE": "0"}),
    Case("demo with no payments", ("demo", "--payments", "0"), 2,
         ("argument --payments: must be at least 1, got 0", "cardpay demo --help")),
    Case("demo with a word for a number", ("demo", "--payments", "many"), 2,
         ("argument --payments: expected a whole number, got 'many'",)),
    Case("payments with a zero limit", ("payments", "--limit", "0"), 2,
         ("argument --limit: must be at least 1, got 0",)),
    Case("payments with an unknown status", ("payments", "--status", "lost"), 2,
         ("argument --status: invalid choice: 'lost'",)),
    Case("quarantine show with a negative id", ("quarantine", "show", "-4"), 2,
         ("cardpay quarantine show:",)),
    Case("quarantine show with a word for an id", ("quarantine", "show", "first"), 2,
         ("argument ID: expected a whole number, got 'first'",)),
    Case("quarantine without an action", ("quarantine",), 2,
         ("the following arguments are required: ACTION",)),
    Case("unknown command", ("frobnicate",), 2,
         ("argument COMMAND: invalid choice: 'frobnicate'", "see `cardpay --help`")),
    Case("unknown option", ("status", "--colour"), 2,
         ("unrecognized arguments: --colour",)),
    Case("no command", (), 2, ("the following arguments are required: COMMAND",)),
    Case("missing RPC URL", ("deploy",), 2, ("CARDPAY_RPC_URL",),
         env={"CARDPAY_RPC_URL": ""}),
    Case("demo without an Anvil to run", ("demo", "--json", "--payments", "1"), 1,
         ("the local chain could not start", "CARDPAY_ANVIL_BIN='/nonexistent'"),
         env={"CARDPAY_ANVIL_BIN": "/nonexistent"}),
    # options of the service and chain commands (their owners validate them before starting)
    Case("zero relay batch size", ("relay", "--batch-size", "0"), 2,
         ("cardpay relay: --batch-size must be at least 1, got 0",),
         env={"CARDPAY_KAFKA_BOOTSTRAP": "127.0.0.1:1"}),
    Case("negative projector batch size", ("project", "--batch-size", "-5"), 2,
         ("cardpay project: --batch-size must be at least 1, got -5",)),
    Case("zero poll interval", ("listen", "--poll-interval", "0"), 2,
         ("--poll-interval must be > 0",), env={"CARDPAY_RPC_URL": "http://127.0.0.1:1"}),
    Case("negative first block", ("backfill", "--from-block", "-1"), 2,
         ("--from-block must be >= 0, got -1",), env={"CARDPAY_RPC_URL": "http://127.0.0.1:1"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mistakes_are_one_clear_line(case: Case) -> None:
    proc = run_cardpay(case.args, case.env)
    assert proc.returncode == case.status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    for fragment in case.says:
        assert fragment in lines[0]
    for secret in case.never:
        assert secret not in proc.stdout + proc.stderr


def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cardpay(("payments",), {"CARDPAY_DATA_DIR": str(blocker / "cardpay")})
    assert proc.returncode == 1
    [line] = message_lines(proc.stderr)
    assert line.startswith(f"cardpay payments: cannot create the data directory {blocker}/cardpay")
    assert line.endswith("set CARDPAY_DATA_DIR to a writable directory (or "
                         "CARDPAY_DATABASE_URL to a server)")


def test_an_embedded_server_that_will_not_start(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("not a data directory\n")
    proc = run_cardpay(("status",), {"CARDPAY_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 1
    [line] = message_lines(proc.stderr)
    assert f"the embedded PostgreSQL did not start in {tmp_path}/pgdata: " in line
    assert f"see {tmp_path}/pgdata/log" in line


def test_a_database_that_does_not_exist(pg_server: Any) -> None:
    url = pg_server.url.replace("/postgres?", "/no_such_db?")
    proc = run_cardpay(("status",), {"CARDPAY_DATABASE_URL": url})
    assert proc.returncode == 1
    [line] = message_lines(proc.stderr)
    assert line.startswith("cardpay status: cannot connect to PostgreSQL at ")
    assert line.endswith('/no_such_db: database "no_such_db" does not exist; check '
                         "CARDPAY_DATABASE_URL")


def test_debug_shows_the_traceback() -> None:
    proc = run_cardpay(("--debug", "db", "upgrade"), {"CARDPAY_DATABASE_URL": UNREACHABLE})
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "DatabaseUnavailable" in proc.stderr


def test_ctrl_c_exits_130_without_a_traceback() -> None:
    """Interrupted while waiting for a node that accepts the connection and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        node = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")},
               "CARDPAY_DATABASE_URL": UNREACHABLE}
        proc = subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "status",
                                 "--rpc-url", node], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=ctrl_c_default)
        conn, _ = silent.accept()  # the command is now waiting for the head
        with conn:
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert message_lines(stderr) == ["cardpay status: interrupted"]


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    proc = run_cardpay(("--version",), {})
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"cardpay {version('cardpay')}"

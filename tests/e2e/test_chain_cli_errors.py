"""The chain side of the CLI (backfill, listen, deploy, replay, listener reset): every mistake and
every refused node is one line on stderr with a known exit status and no traceback, and backfill
reports the range it really indexed.

Each case runs `python -m cardpay.cli.main ...` as a process. Cases marked `node` get a fresh
Anvil with the local replicas deployed (`{rpc}`, `{deployment}` and `{head}` in their arguments are
filled in) and a fresh database.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import message_lines, run_cardpay

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LOCAL_RECORDING = ROOT / "anvil-fixtures" / "local" / "basic"
GNOSIS_RECORDING = ROOT / "anvil-fixtures" / "gnosis" / "gp_cashback_batch_2024-09-12"


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    status: int
    says: tuple[str, ...]
    """Fragments the one stderr line (or stdout, for status 0) must contain."""
    node: bool = False


CASES = [
    Case("negative --from-block", ("backfill", "--from-block", "-1"), 2,
         ("cardpay backfill:", "--from-block must be >= 0, got -1")),
    Case("negative --to-block", ("backfill", "--from-block", "0", "--to-block", "-5"), 2,
         ("--to-block must be >= 0, got -5",)),
    Case("--from-block after --to-block", ("backfill", "--from-block", "50", "--to-block", "10"),
         2, ("--from-block 50 is after --to-block 10",)),
    Case("negative --from-block for listen", ("listen", "--from-block", "-7"), 2,
         ("cardpay listen:", "--from-block must be >= 0, got -7")),
    Case("negative --cardholders", ("deploy", "--cardholders", "-1"), 2,
         ("--cardholders must be >= 1",)),
    Case("zero --poll-interval", ("listen", "--poll-interval", "0"), 2,
         ("--poll-interval must be > 0",)),
    Case("negative --poll-interval", ("listen", "--poll-interval", "-2.5"), 2,
         ("--poll-interval must be > 0",)),
    Case("metrics port out of range", ("listen", "--metrics-port", "70000"), 2,
         ("--metrics-port", "70000")),
    Case("reset from a negative block", ("listener", "reset", "--from-block", "-3"), 2,
         ("--from-block must be >= 0",)),
    Case("replay of a missing directory", ("replay", "/nonexistent/recording"), 2,
         ("cardpay replay:", "/nonexistent/recording does not exist")),
    Case("a local recording replayed with the gnosis preset", ("replay", str(LOCAL_RECORDING)),
         2, ("recording of chain 31337", "gnosis preset indexes chain 100", "--preset local")),
    Case("unreachable node", ("backfill", "--from-block", "0", "--rpc-url",
                              "http://127.0.0.1:9"), 1,
         ("cannot reach the node at http://127.0.0.1:9: connection refused",
          "check CARDPAY_RPC_URL / --rpc-url"), node=True),
    Case("a web server that is no EVM node", ("listen", "--from-block", "0", "--rpc-url",
                                              "{web}"), 1,
         ("cannot reach the node at http://127.0.0.1:", "check CARDPAY_RPC_URL / --rpc-url"),
         node=True),
    Case("deploy on an unreachable node", ("deploy", "--rpc-url", "http://127.0.0.1:9"), 1,
         ("cannot reach the node at http://127.0.0.1:9",)),
    Case("gnosis preset on an Anvil node", ("backfill", "--preset", "gnosis", "--from-block", "0"),
         1, ("is chain 31337, but the gnosis preset indexes chain 100",), node=True),
    Case("busy metrics port", ("listen", "--from-block", "0", "--metrics-port", "{busy}"), 1,
         ("cannot serve metrics on 127.0.0.1:",), node=True),
    Case("backfill past the confirmed head", ("backfill", "--from-block", "0", "--to-block",
                                              "{past}"), 0,
         ("backfilled blocks 0..{head} (asked up to {past}; the confirmed head is {head})",),
         node=True),
]


@pytest.fixture
def web_server() -> Iterator[str]:
    """An HTTP server that answers every request with an HTML page (not JSON-RPC)."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>not a node</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _check(case: Case, proc: subprocess.CompletedProcess[str], fill: dict[str, str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == case.status, proc.stderr
    lines = message_lines(proc.stderr if case.status else proc.stdout)
    assert len(lines) == 1, lines
    for fragment in case.says:
        assert fragment.format(**fill) in lines[0]


@pytest.mark.parametrize("case", [c for c in CASES if not c.node], ids=lambda c: c.name)
def test_chain_command_mistakes_are_one_line(case: Case, tmp_path: Path) -> None:
    env = {"CARDPAY_DATA_DIR": str(tmp_path), "CARDPAY_RPC_URL": "http://127.0.0.1:9"}
    _check(case, run_cardpay(case.args, env), {})


@pytest.mark.parametrize("case", [c for c in CASES if c.node], ids=lambda c: c.name)
def test_chain_commands_against_a_node(case: Case, anvil_node: Any, pg_url: str, tmp_path: Path,
                                       web_server: str) -> None:
    deployment = tmp_path / "local-deployment.json"
    deploy = run_cardpay(("deploy", "--rpc-url", anvil_node.rpc_url, "--cardholders", "1", "--out",
                   str(deployment), "--no-cards"), {})
    assert deploy.returncode == 0, deploy.stderr
    head = int(anvil_node.rpc("eth_blockNumber"), 16)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fill = {"head": str(head), "past": str(head + 5), "busy": str(busy.getsockname()[1]),
                "web": web_server}
        env = {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_RPC_URL": anvil_node.rpc_url,
               "CARDPAY_CONFIRMATIONS": "0", "CARDPAY_DATA_DIR": str(tmp_path)}
        _check(case, run_cardpay(tuple(a.format(**fill) for a in case.args), env), fill)


def test_replay_strict_fails_when_anything_was_quarantined(tmp_path: Path) -> None:
    recording = tmp_path / "recording"
    shutil.copytree(GNOSIS_RECORDING, recording)
    clean = run_cardpay(("replay", str(recording), "--strict"), {})
    assert clean.returncode == 0, clean.stderr
    with (recording / "logs.jsonl").open("a") as logs:  # an object that is no log
        logs.write(json.dumps({"address": "0x12", "blockNumber": "0x1"}) + "\n")
    lenient = run_cardpay(("replay", str(recording)), {})
    assert lenient.returncode == 0, lenient.stderr
    assert "1 quarantined" in lenient.stdout
    strict = run_cardpay(("replay", str(recording), "--strict"), {})
    assert strict.returncode == 1
    assert "Traceback" not in strict.stderr
    assert message_lines(strict.stderr) == ["cardpay replay: 1 logs quarantined (--strict)"]

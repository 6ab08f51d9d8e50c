"""`cardpay status`, `cardpay quarantine list|show` and `cardpay payments` as processes on a real
PostgreSQL: rows written with the event store and the projector, read back through the CLI in
JSON and CSV, parsed and compared with what was written."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from cardpay.postgres.schema import chain_cursor, quarantine
from tests.support.indexing import project
from tests.support.workload import expected_rows, payment_events, write

pytestmark = pytest.mark.e2e


def _cardpay(pg_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", *args], capture_output=True, text=True,
        timeout=120,
        env={**os.environ, "CARDPAY_DATABASE_URL": pg_url, "CARDPAY_RPC_URL": "", **env},
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _quarantine(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(quarantine), rows)


class _FakeNode(BaseHTTPRequestHandler):
    """Just enough JSON-RPC for `status`: the head is block 0x64 on chain 31337."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        result = {"eth_blockNumber": "0x64", "eth_chainId": "0x7a69"}[body["method"]]
        reply = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_node() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _FakeNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def populated(pg_engine: Engine) -> dict[str, Any]:
    """30 projected payments, then 5 more written but not projected; a listener cursor; three
    quarantined rows from two sources."""
    projected, pending = payment_events(30, seed=4), payment_events(35, seed=4)[30:]
    write(pg_engine, projected, outbox_topic="cardpay.payments")
    project(pg_engine)
    write(pg_engine, pending, outbox_topic="cardpay.payments")
    with pg_engine.begin() as conn:
        conn.execute(insert(chain_cursor).values(name="main", block_number=90,
                                                 block_hash="0x" + "ab" * 32))
    _quarantine(pg_engine, [
        {"source": "listener:main", "key": "0xdead:1", "reason": "undecodable log",
         "payload": {"topics": ["0x01"], "data": "0x"}},
        {"source": "listener:main", "key": "0xdead:2", "reason": "undecodable log",
         "payload": {"topics": ["0x02"], "data": "0x"}},
        {"source": "projector:payments", "key": "events@7", "reason": "out of order [v3]",
         "payload": {"event": {"version": 3, "nested": {"amount": "12"}}}},
    ])
    return {"projected": projected, "pending": pending}


def test_status_json_reports_every_consumer(pg_url: str, populated: dict[str, Any],
                                            fake_node: str) -> None:
    report = json.loads(_ok(_cardpay(pg_url, "status", "--json", "--rpc-url", fake_node)))

    all_events = sum(len(p) for p in populated["projected"] + populated["pending"])
    pending_events = sum(len(p) for p in populated["pending"])
    assert report["chain"] == {"head": 100, "chain_id": 31337, "unknown_because": None}
    [listener] = report["listeners"]
    assert (listener["name"], listener["cursor_block"], listener["head"],
            listener["lag_blocks"]) == ("main", 90, 100, 10)
    [consumer] = report["consumers"]
    assert (consumer["consumer"], consumer["source"], consumer["lag"]) == (
        "payments", "events", pending_events)
    assert report["event_log"]["events"] == all_events
    assert report["outbox"]["unpublished"] == all_events
    assert report["outbox"]["oldest_unpublished_age_seconds"] >= 0
    assert sorted((q["source"], q["reason"], q["count"]) for q in report["quarantine"]) == [
        ("listener:main", "undecodable log", 2), ("projector:payments", "out of order [v3]", 1)]
    assert report["database"].startswith("postgresql://") and "?" in report["database"]


def test_status_table_says_unknown_without_a_node(pg_url: str, populated: dict[str, Any]) -> None:
    out = _ok(_cardpay(pg_url, "status"))
    assert "chain head: unknown (no RPC URL (set CARDPAY_RPC_URL))" in out
    listener_line = next(line for line in out.splitlines() if line.lstrip().startswith("main"))
    assert listener_line.split()[:4] == ["main", "unknown", "90", "unknown"]
    assert "undecodable log" in out and "out of order [v3]" in out  # markup-like text kept
    assert f"{sum(len(p) for p in populated['pending'])}" in out


def test_status_on_an_empty_database(pg_url: str) -> None:
    report = json.loads(_ok(_cardpay(pg_url, "status", "--json")))
    assert report["listeners"] == [] and report["consumers"] == []
    assert report["outbox"] == {"unpublished": 0, "oldest_unpublished_at": None,
                                "oldest_unpublished_age_seconds": None}
    assert report["chain"]["head"] is None


def test_quarantine_list_json_csv_and_source_filter(pg_url: str, populated: dict[str, Any]) -> None:
    rows = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--json")))
    assert [(r["source"], r["key"], r["reason"]) for r in rows] == [
        ("listener:main", "0xdead:1", "undecodable log"),
        ("listener:main", "0xdead:2", "undecodable log"),
        ("projector:payments", "events@7", "out of order [v3]"),
    ]
    assert rows == sorted(rows, key=lambda r: r["id"])

    table = list(csv.DictReader(io.StringIO(_ok(_cardpay(
        pg_url, "quarantine", "list", "--source", "projector:payments", "--format", "csv")))))
    assert [(r["id"], r["key"], r["reason"]) for r in table] == [
        (str(rows[2]["id"]), "events@7", "out of order [v3]")]

    none = _ok(_cardpay(pg_url, "quarantine", "list", "--source", "nobody"))
    assert "nothing quarantined from nobody" in none


def test_quarantine_show_prints_the_full_payload(pg_url: str, populated: dict[str, Any]) -> None:
    rows = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--json")))
    entry = rows[2]
    out = _ok(_cardpay(pg_url, "quarantine", "show", str(entry["id"])))
    head, payload = out.split("payload:\n", 1)
    assert json.loads(payload) == {"event": {"version": 3, "nested": {"amount": "12"}}}
    assert "reason:         out of order [v3]" in head
    assert "source:         projector:payments" in head

    missing = _cardpay(pg_url, "quarantine", "show", "999999")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("cardpay quarantine show: no quarantined row with id 999999: "
                                      "`cardpay quarantine list` shows the ids")


def test_payments_json_and_csv_match_the_projection(pg_url: str,
                                                   populated: dict[str, Any]) -> None:
    expected = expected_rows(populated["projected"])
    rows = json.loads(_ok(_cardpay(pg_url, "payments", "--json", "--limit", "1000")))
    assert {r["payment_id"] for r in rows} == set(expected)
    for r in rows:
        want = expected[r["payment_id"]]
        assert (r["status"], r["currency"], r["decimals"], int(r["spent"]),
                int(r["refunded"]), r["account"]) == (
            want.status, want.currency, want.decimals, want.spent, want.refunded, want.account)
        assert isinstance(r["spent"], str)  # exact: base units as a string

    limited = list(csv.DictReader(io.StringIO(_ok(_cardpay(
        pg_url, "payments", "--format", "csv", "--limit", "3")))))
    assert len(limited) == 3
    for r in limited:
        assert int(r["spent"]) == expected[r["payment_id"]].spent
        assert int(r["decimals"]) == expected[r["payment_id"]].decimals

    statuses = {w.status for w in expected.values()}
    status = sorted(statuses)[0]
    only = json.loads(_ok(_cardpay(pg_url, "payments", "--json", "--status", status,
                                   "--limit", "1000")))
    assert {r["payment_id"] for r in only} == {
        pid for pid, w in expected.items() if w.status == status}


def test_payments_table_shows_decimal_amounts(pg_url: str, populated: dict[str, Any]) -> None:
    expected = expected_rows(populated["projected"])
    some = next(w for w in expected.values() if w.currency == "USDCe")
    out = _ok(_cardpay(pg_url, "payments", "--limit", "1000"))
    line = next(line for line in out.splitlines() if some.payment_id in line)
    whole, frac = divmod(some.spent, 10 ** 6)
    assert f"{whole}.{str(frac).rjust(6, '0').rstrip('0').ljust(2, '0')}" in line.split()


def test_read_commands_refuse_a_database_without_the_schema(make_db: Any, pg_server: Any) -> None:
    from sqlalchemy import text

    from tests.conftest import _admin

    admin = _admin(pg_server.url)
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "cardpay_noschema"'))
    try:
        url = pg_server.url.replace("/postgres?", "/cardpay_noschema?")
        for command in (["status"], ["payments"], ["quarantine", "list"]):
            proc = _cardpay(url, *command)
            assert proc.returncode == 1
            assert "has no cardpay tables yet: run `cardpay db upgrade` first" in proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE "cardpay_noschema" WITH (FORCE)'))
        admin.dispose()


def test_resolved_rows_are_kept_but_only_listed_with_all(pg_url: str, pg_engine: Engine,
                                                        populated: dict[str, Any]) -> None:
    from sqlalchemy import func, update

    with pg_engine.begin() as conn:
        conn.execute(update(quarantine).where(quarantine.c.key == "0xdead:2")
                     .values(resolved_at=func.now(), resolution="applied on retry"))
    open_rows = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--json")))
    assert [r["key"] for r in open_rows] == ["0xdead:1", "events@7"]
    every = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--all", "--json")))
    assert [(r["key"], r["resolution"]) for r in every] == [
        ("0xdead:1", None), ("0xdead:2", "applied on retry"), ("events@7", None)]
    report = json.loads(_ok(_cardpay(pg_url, "status", "--json")))
    assert sorted((q["source"], q["count"]) for q in report["quarantine"]) == [
        ("listener:main", 1), ("projector:payments", 1)]


def test_retry_reports_what_the_service_layer_decided(pg_url: str,
                                                      populated: dict[str, Any]) -> None:
    rows = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--json")))
    undecodable = rows[0]
    proc = _cardpay(pg_url, "quarantine", "retry", str(undecodable["id"]))
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"cardpay quarantine retry: row {undecodable['id']} not retryable: ")
    after = json.loads(_ok(_cardpay(pg_url, "quarantine", "list", "--json")))
    assert undecodable["id"] in [r["id"] for r in after]  # still there

    missing = _cardpay(pg_url, "quarantine", "retry", "999999")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("cardpay quarantine retry: no quarantined row with id "
                                      "999999: `cardpay quarantine list` shows the ids")


def test_read_commands_refuse_an_older_schema(pg_url: str, pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    proc = _cardpay(pg_url, "payments")
    assert proc.returncode == 1
    assert "has schema revision 0001, this cardpay reads revision" in proc.stderr
    assert "run `cardpay db upgrade`" in proc.stderr

"""After the simulator's seeded workload through the whole lifecycle, what finance reads — the
finance API, the CLI, the web page — equals the simulator's expectation payment by payment, the
daily figures add up to the payments, the settlement batches equal the network's reports (on
the page too), and every settlement day reconciles three ways (chain, ledger, report) with no
break."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from cardpay.api.finance_page import settlement_cells
from cardpay.bootstrap.lifecycle import lifecycle_stack, run_lifecycle
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.settings import Settings
from domain.money import FIAT_TOKENS, fiat_currency
from tests.support.cli import run_cardpay
from tests.support.lifecycle import CALM_DEADLINE_MS, assert_everything_agrees

pytestmark = pytest.mark.e2e
PAYMENTS = 250
FIELDS = {"status": "network_status", "authorized": "authorized", "held": "held",
          "posted": "posted", "cleared": "network_cleared", "reversed": "reversed",
          "released": "released", "over_cleared": "over_cleared", "returned": "returned"}
"""The simulator's name of each network figure -> the payments read model's."""


def all_pages(client: httpx.Client, path: str, key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        reply = client.get(path, params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        out += body[key]
        if body.get("next") is None:
            return out
        params["after"] = body["next"]


def test_what_finance_reads_equals_the_simulators_expectation(pg_url: str,
                                                             tmp_path: Path) -> None:
    settings = Settings(database_url=pg_url, data_dir=tmp_path,
                        authorization_deadline_ms=CALM_DEADLINE_MS)
    with lifecycle_stack(settings, cardholders=20) as s:
        result = run_lifecycle(s, PAYMENTS, seed=23, duplicates=0.1, reorder=0.2, timeout=600)
        assert_everything_agrees(result, min_spent=PAYMENTS // 10)
        assert result.breaks == []  # every settlement day reconciles three ways
        token = PostgresTokenStore(s.engine).create(["finance:read"], name="e2e").token
        with httpx.Client(base_url=s.api_url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            payments = {p["payment_id"]: p for p in all_pages(client, "/v1/payments",
                                                              "payments")}
            days = client.get("/v1/days").json()["days"]
            settlements = client.get("/v1/settlements").json()["settlements"]
            reconciled = {d: client.get("/v1/reconciliation", params={"day": d}).json()
                          for d in sorted({b["day"] for b in settlements})}
            holds = client.get("/v1/holds").json()["holds"]
        # the finance page, signed in with the same token (its HTML, as a browser gets it)
        with httpx.Client(base_url=s.api_url, timeout=30, follow_redirects=True) as browser:
            signed_in = browser.post("/finance/login", data={"token": token})
            assert signed_in.status_code == 200, signed_in.text[:300]
            page = browser.get("/finance").text

    # payment by payment, the network side is the simulator's (fiat minor units)
    assert result.expected and set(result.expected) <= set(payments)
    for payment_id, want in result.expected.items():
        row = payments[payment_id]
        fiat = fiat_currency(want["currency"])
        unit = 10 ** (FIAT_TOKENS[fiat].decimals - fiat.decimals)
        got = {k: row[v] if k == "status" else int(row[v] or 0) // unit
               for k, v in FIELDS.items()}
        assert got == {k: want[k] for k in FIELDS}, payment_id
    # the days add up to the payments, per token
    for token_code in {p["currency"] for p in payments.values() if p["currency"]}:
        rows = [p for p in payments.values() if p["currency"] == token_code]
        mine = [d for d in days if d["currency"] == token_code]
        for day_key, row_key in (("authorized", "authorized"), ("cleared", "network_cleared"),
                                 ("returned", "returned"), ("spent", "spent"),
                                 ("refunded", "refunded"), ("settled", "settled")):
            assert sum(int(d[day_key]) for d in mine) == sum(int(r[row_key] or 0)
                                                             for r in rows), (token_code, day_key)
    # the open holds are the ones the simulator still holds; every batch settled at the
    # report's figures; no break
    assert {h["payment_id"] for h in holds} == {
        pid for pid, want in result.expected.items() if want["held"] > 0}
    assert settlements and all(b["status"] == "settled" and b["diff_net"] == "0"
                               for b in settlements)
    assert all(day["clean"] for day in reconciled.values()), reconciled
    # the page shows each batch's figures as the API's records give them
    for record in settlements:
        row = re.search(rf'<tr id="settlement-{record["day"]}-{record["currency"]}"[^>]*>(.*?)'
                        r"</tr>", page, re.S)
        assert row is not None, record["day"]
        shown = dict(re.findall(r'<td data-field="([^"]+)"[^>]*>([^<]*)</td>', row.group(1)))
        assert shown == {k: html.escape(v) for k, v in settlement_cells(record).items()}

    # the CLI shows the same records as the API
    cli = run_cardpay(("payments", "--json", "--limit", "1000"),
                      {"CARDPAY_DATABASE_URL": pg_url})
    assert cli.returncode == 0, cli.stderr
    by_cli = {p["payment_id"]: p for p in json.loads(cli.stdout)}
    assert by_cli.keys() == payments.keys()
    for payment_id, row in payments.items():
        assert {k: by_cli[payment_id][k] for k in ("network_status", "authorized",
                                                    "network_cleared", "returned", "spent",
                                                    "refunded", "settled")} == {
            k: row[k] for k in ("network_status", "authorized", "network_cleared", "returned",
                                "spent", "refunded", "settled")}, payment_id

"""Replaying the real Gnosis Pay receipts: every transfer's class, token, amount and cardholder.

The expected values come from two places independent of the listener: facts stated in
../shared/gnosis-pay-onchain.md and its data README (amounts, counts, addresses), and an eth-abi
decode of the raw v2/GNO Transfer logs (the v1 EURe/GBPe mirror logs are the duplicates).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eth_abi import decode as abi_decode

from cardpay.cli.replay import ReplayReport, run_replay

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "anvil-fixtures" / "gnosis"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
SETTLEMENT = "0x4822521e6135cd2599199c83ea35179229a172ee"
EURE_V2, GBPE_V2 = "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430", "0x8e34bfec4f6eb781f9743d9b4af99cd23f9b7053"
GNO = "0x9c58bacc331c9aa871afd802db6379a98e80cedb"
SYMBOL = {EURE_V2: "EURe", GBPE_V2: "GBPe", GNO: "GNO"}


def _replay(name: str) -> ReplayReport:
    report = run_replay(FIXTURES / name, "gnosis", show_progress=False)
    assert report.quarantined == []
    return report


def _abi_transfers(name: str) -> list[tuple[str, str, str, int]]:
    """(token symbol, from, to, value) of every canonical-token Transfer, by eth-abi."""
    out = []
    for line in (FIXTURES / name / "logs.jsonl").read_text().splitlines():
        log = json.loads(line)
        if log["topics"][:1] == [TRANSFER] and log["address"] in SYMBOL:
            (value,) = abi_decode(["uint256"], bytes.fromhex(log["data"][2:]))
            out.append((SYMBOL[log["address"]], "0x" + log["topics"][1][-40:],
                        "0x" + log["topics"][2][-40:], value))
    return out


def _rows(report: ReplayReport) -> list[tuple[str, str, str, str, int, str | None]]:
    return [(a["class"], a["token"], a["from"], a["to"], int(a["amount"]), a["cardholder"])
            for a in report.activity]


def test_card_spend_2024_old_spender_module() -> None:
    report = _replay("gp_spend_2024-09-17")
    safe = "0xf4a1fb1689104479de1ecadfa472a9b866d08b16"
    assert _rows(report) == [("card_spend", "EURe", safe, SETTLEMENT, 8_500000000000000000, safe)]
    assert [(p["cardholder"], p["token"], p["amount"]) for p in report.payments] == [
        (safe, "EURe", "8500000000000000000")]
    assert report.totals == {"card_spend": {"EURe": {"count": 1, "amount": "8500000000000000000"}}}


def test_card_spend_2026_new_spender_module_resolves_the_safe_not_the_roles_module() -> None:
    report = _replay("gp_spend_new_spender_2026-06-08")
    safe = "0x9e0d8c9ff04f58e8d4053b78d33e582d8acc8c44"
    assert _rows(report) == [("card_spend", "EURe", safe, SETTLEMENT, 2_100000000000000000, safe)]
    assert report.payments[0]["cardholder"] == safe  # Spend.account is the Roles module 0x0b77…
    assert report.payments[0]["tx_hash"].startswith("0x91e34df6")


def test_refund_batch_45_legs_each_counted_once() -> None:
    report = _replay("gp_refund_batch_2024-09-20")
    rows = _rows(report)
    expected = [("refund", symbol, src, dst, value, dst)
                for symbol, src, dst, value in _abi_transfers("gp_refund_batch_2024-09-20")]
    assert rows == expected
    assert len(rows) == 45
    assert report.totals["refund"]["EURe"]["count"] == 43
    assert report.totals["refund"]["GBPe"]["count"] == 2
    assert ("refund", "EURe", SETTLEMENT, "0x49e52a677bd19e50bee3642a8050a5a08a6ec697",
            2_350000000000000000, "0x49e52a677bd19e50bee3642a8050a5a08a6ec697") in rows
    assert report.payments == []  # refunds are plain transfers: no payment is opened


def test_cashback_batch_322_gno_transfers() -> None:
    report = _replay("gp_cashback_batch_2024-09-12")
    expected = [("cashback", s, src, dst, v, dst)
                for s, src, dst, v in _abi_transfers("gp_cashback_batch_2024-09-12")]
    assert _rows(report) == expected
    assert len(expected) == 322
    assert {src for _, _, src, _, _, _ in expected} == {"0xcdf50be9061086e2ecfe6e4a1bf9164d43568eec"}


def test_referral_reward() -> None:
    report = _replay("gp_referral_2024-10-02")
    to = "0xc746598c9dd7fc62ef8775445f2f375acbaca7ae"
    assert _rows(report) == [("referral", "EURe", "0xb2e7803ce9aa69ca0f82256ff1ec5c9983608e04", to,
                              30_230000000000000000, to)]


def test_monerium_mint_and_burn_are_top_up_and_off_ramp() -> None:
    mint, burn = _replay("monerium_eure_v2_mint"), _replay("monerium_eure_v2_burn")
    zero = "0x" + "00" * 20
    assert _rows(mint) == [("top_up", "EURe", zero, "0xa6bf663abd2c749ed479c383457b1a647dab72e5",
                            50 * 10**18, None)]
    assert [(k, t, f, to) for k, t, f, to, _, _ in _rows(burn)] == [
        ("off_ramp", "EURe", "0x9c6c56700f4952d45896757ac098968e97695a55", zero)]
    (value,) = [v for *_, v in _abi_transfers("monerium_eure_v2_burn")]
    assert _rows(burn)[0][4] == value == 905_020000000000000000


def test_all_recordings_replayed_together_through_the_cli(tmp_path: Path) -> None:
    """Seven blocks in one directory, through `cardpay replay --json`, counted exactly once."""
    combined = tmp_path / "all"
    combined.mkdir()
    for name in ("logs.jsonl", "blocks.jsonl"):
        with (combined / name).open("w") as out:
            for fixture in sorted(FIXTURES.iterdir()):
                shutil.copyfileobj((fixture / name).open(), out)
    proc = subprocess.run([sys.executable, "-m", "cardpay.cli.main", "replay", str(combined), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    counts = {kind: {t: e["count"] for t, e in tokens.items()}
              for kind, tokens in report["totals"].items()}
    assert counts == {"card_spend": {"EURe": 2}, "refund": {"EURe": 43, "GBPe": 2},
                      "cashback": {"GNO": 322}, "referral": {"EURe": 1},
                      "top_up": {"EURe": 1}, "off_ramp": {"EURe": 1}}
    assert len(report["activity"]) == 372 and report["quarantined"] == []
    keys = {(a["tx_hash"], a["log_index"]) for a in report["activity"]}
    assert len(keys) == 372
    assert len(report["payments"]) == 2


def test_replay_of_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "replay", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "nope does not exist" in proc.stderr

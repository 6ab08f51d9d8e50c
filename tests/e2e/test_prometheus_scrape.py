"""The Grafana dashboard and the alert rules against a real Prometheus scraping a running stack:
every panel's query and every alert's expression returns data, so a renamed metric cannot
leave a blank panel or an alert that never fires.

What runs: `cardpay run` (embedded PostgreSQL, Anvil with the replicas, listener, saga worker,
projector, API; the PostgreSQL event log as feed), plus a `cardpay relay` this test starts on
the same database with a Kafka broker from the harness (`cardpay.devstack.kafka_broker`). Why
the extra relay: `cardpay run` starts the relay only on Kafka, and on Kafka no consumer reads
the event log, so `cardpay_feed_lag_events` has no series; one stack on the log feed plus a
relay publishing its outbox (written on either feed) shows both the relay's and the log
consumers' metrics. Debian's Prometheus scrapes every metrics URL of the readiness line and
the relay's, every second, with docker/prometheus/alerts.yml loaded.

The workload, through the API: the simulator (`cardpay network simulate`, 20 payments:
approvals, partial approvals, declines, clearings, reversals, returns, the settlement report),
an unsigned request (401, `cardpay_webhook_rejections_total`) and a signed body that is not
JSON (quarantined, `cardpay_network_rejected_total`).

What "returns data" means (`tests.support.promql.checks`), each an instant query through
/api/v1/query that must return a non-empty vector:
- every panel query as Grafana sends it (`$__rate_interval` as Grafana computes it: 1m);
- every alert's expression without its final comparison (`X > 300` -> `X`): the series the
  alert compares exist, whether or not it fires now (most must not);
- every metric selector of both, alone: an aggregation over `... or vector(0)`
  (CardpayWebhookRejectionsSpike) returns data even when its metric is gone, its selectors do
  not.
Two kinds of series have data without the workload making the event happen, by design: the
saga counters of rare events (retries, compensations, timers fired), exported at 0 from the
saga worker's start (`SagaMetrics.expect`; the workload makes no retry), and the reconciliation
breaks per currency, exported from the API's start (`StateMetrics`; the API reconciles only
settled days, and a fresh stack's payments are all today's). A renamed metric still has none:
a copy of the dashboard with one metric renamed is checked too, and exactly its panel has no
data, which is what a renamed metric in the code would look like.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.support import promql
from tests.support.api_process import free_port, kill_tree
from tests.support.network import signed_headers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^cardpay run: ready: API (\S+) .* metrics (.+); Ctrl-C", re.M)
JOBS = ("api", "listen", "project", "sagas")
"""The readiness line's metrics URLs, in its order."""
PROMETHEUS = "/usr/bin/prometheus"


@dataclass
class Running:
    tmp: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    broker: Any = None
    """The Kafka broker the relay publishes to (stopped last)."""

    def start(self, name: str, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.out").open("wb") as o, \
                (self.tmp / f"{name}.err").open("wb") as e:
            proc = subprocess.Popen(list(args), cwd=ROOT, env=env or self.env, stdout=o, stderr=e)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(proc)


def wait_until(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]
               ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f}s:\n{log()}")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def prometheus_config(targets: dict[str, str]) -> dict[str, Any]:
    """Scrape every URL each second (job = process), with the repository's alert rules."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(promql.ALERTS)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": urlsplit(url).path or "/metrics",
             "static_configs": [{"targets": [urlsplit(url).netloc]}]}
            for job, url in targets.items()],
    }


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector; a query Prometheus refuses fails the test (not "no data")."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] in ("vector", "scalar"), (expr, body["data"])
        if body["data"]["resultType"] == "scalar":
            return [{"value": body["data"]["result"]}]
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Running]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    running = Running(tmp_path, {**env, "CARDPAY_DATA_DIR": str(tmp_path / "data")})
    try:
        yield running
    finally:
        running.stop()
        if running.broker is not None:
            running.broker.stop()


def test_every_panel_and_alert_expression_returns_data_from_a_scraped_stack(
        stack: Running, tmp_path: Path) -> None:
    if not Path(PROMETHEUS).is_file():
        pytest.skip("Debian's prometheus package is not installed")
    from cardpay.devstack.kafka_broker import KafkaBroker

    t0 = time.monotonic()
    py = (sys.executable, "-m", "cardpay")
    run = stack.start("run", *py, "run", "--port", "0", "--metrics-port", "0", "--grace", "5",
                      "--cardholders", "2")
    broker = stack.broker = KafkaBroker()  # starts while the stack deploys
    broker.start()

    def run_log() -> str:
        return stack.log("run")

    ready = wait_until("readiness line", lambda: READY.search(
        (tmp_path / "run.out").read_text()) or run.poll() is not None, 90, run_log)
    assert isinstance(ready, re.Match), run_log()
    api, urls = ready.group(1), ready.group(2).split()
    assert len(urls) == len(JOBS), urls
    targets = dict(zip(JOBS, urls, strict=True))
    print(f"stack ready after {time.monotonic() - t0:.0f}s")

    relay_port = free_port()
    stack.start("relay", *py, "relay", "--metrics-port", str(relay_port),
                env={**stack.env, "CARDPAY_KAFKA_BOOTSTRAP": broker.bootstrap_servers})
    targets["relay"] = f"http://127.0.0.1:{relay_port}/metrics"

    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets)))
    stack.start("prometheus", PROMETHEUS, f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn")
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    wait_until("Prometheus ready", lambda: answers(f"{prom.url}/-/ready"), 30,
               lambda: stack.log("prometheus"))

    # the workload (see the docstring)
    secret = (tmp_path / "data" / "dev-webhook-secret").read_text().strip()
    simulate(stack, api, secret, payments=20, seed=1)
    unsigned = httpx.post(f"{api}/v1/network/authorizations", content=b"{}",
                          headers={"content-type": "application/json"}, timeout=10)
    assert unsigned.status_code == 401
    body = b"this is not json"
    not_json = httpx.post(f"{api}/v1/network/authorizations", content=body, timeout=10,
                          headers=signed_headers(body, f"msg_{uuid.uuid4().hex}", secret=secret))
    assert 400 <= not_json.status_code < 500, not_json.text
    print(f"workload done after {time.monotonic() - t0:.0f}s")

    # every target scraped, every rule loaded and evaluated without error
    wait_until("every target up", lambda: len(prom.query("up == 1")) == len(targets), 30,
               lambda: json.dumps(prom.query("up")))
    rules = promql.alert_rules()
    assert set(_health(prom)) == {r["alert"] for r in rules}
    wait_until("every rule evaluated", lambda: all(h == "ok" for h, _ in _health(prom).values()),
               20, lambda: str(_health(prom)))

    todo = promql.checks(promql.dashboard(), rules)
    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = promql.without_data(prom.query, todo)
        return not missing

    deadline = time.monotonic() + 60
    while not all_have_data() and time.monotonic() < deadline:
        time.sleep(2)
    assert not missing, "no data for:\n" + "\n".join(missing) + "\n" + run_log()
    print(f"{len(todo)} expressions with data after {time.monotonic() - t0:.0f}s")

    # the same check on a copy of the dashboard with one metric renamed: its panel is blank
    text = promql.DASHBOARD.read_text().replace("cardpay_saga_steps_total",
                                                "cardpay_saga_step_total")
    renamed = tmp_path / "renamed.json"
    renamed.write_text(text)
    blank = promql.without_data(prom.query, promql.checks(promql.dashboard(renamed), []))
    assert blank == ["panel Saga steps by kind and message / A: sum by (kind, message) "
                     "(rate(cardpay_saga_step_total[1m]))",
                     "panel Saga steps by kind and message / A: selector: "
                     "cardpay_saga_step_total"], blank
    print(f"whole test {time.monotonic() - t0:.0f}s")


def _health(prom: Prometheus) -> dict[str, tuple[str, str]]:
    groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return {r["name"]: (r["health"], r.get("lastError", "")) for g in groups
            for r in g["rules"]}


def simulate(stack: Running, api: str, secret: str, *, payments: int, seed: int) -> None:
    """`cardpay network simulate` through the API; every answer as its oracle expects."""
    args = [sys.executable, "-m", "cardpay", "network", "simulate", "--api", api, "--secret",
            secret, "--payments", str(payments), "--seed", str(seed), "--json"]
    done = subprocess.run(args, cwd=ROOT, env=stack.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["requests"] > payments, summary

"""kill -9 of `cardpay api` at seeded points of a whole lifecycle, then a restart: the same
final state as an uninterrupted run, and no spend or refund sent twice on chain.

The API runs as its own process (on one port, so the network finds it again after a restart);
the listener, the saga worker, the relayer, the refund sender and the projector run as in
`cardpay demo`. A kill lands in the middle of the simulator's messages: some were committed and
their answers lost, some were never received. The simulator sends a message again while the API
does not answer, as a network does; an answer given before the kill is given again, not decided
twice. "The same final state as an uninterrupted run" is what the simulator's oracle expects
message by message (the kills are not in it), and per currency the chain's logs equal the read
model, the network's figures, the ledger and the settlement report, as in the uninterrupted
lifecycle test.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cardpay.bootstrap.lifecycle import lifecycle_stack, run_lifecycle
from cardpay.settings import Settings
from tests.support.api_process import env_for, free_port, wait_healthy
from tests.support.lifecycle import CALM_DEADLINE_MS, assert_everything_agrees

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = 300
KILLS = 3
SEED = 21


@dataclass
class KillableApi:
    """`cardpay api` as a process on a fixed port, which the test may kill -9 and start again."""

    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    kills: list[int] = field(default_factory=list)
    """The number of deliveries the API had recorded at each kill."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardpay.cli.main", "api", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        wait_healthy(self.proc, self.url)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no cleanup, a transaction may be open
        self.proc.wait(timeout=30)

    @contextmanager
    def serve(self, settings: Settings, _engine: Engine) -> Iterator[str]:
        """The lifecycle stack's API starter: its settings as the process's environment."""
        assert settings.database_url is not None
        extra = {"CARDPAY_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
                 "CARDPAY_AUTHORIZATION_DEADLINE_MS": str(settings.authorization_deadline_ms)}
        if settings.kafka_bootstrap:
            extra |= {"CARDPAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                      "CARDPAY_KAFKA_TOPIC": settings.kafka_topic}
        self.env = env_for(settings.database_url, **extra)
        self.env["CARDPAY_WEBHOOK_SECRETS"] = ",".join(settings.webhook_secrets)
        self.start()
        try:
            yield self.url
        finally:
            self.kill()
            if self.proc is not None and self.proc.stderr is not None:
                self.proc.stderr.close()


def deliveries(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM network_deliveries")).scalar_one())


def killer(api: KillableApi, engine: Engine, targets: list[int],
           stop: threading.Event, errors: list[BaseException]) -> None:
    """Kill the API as soon as it has recorded each target's number of deliveries (the
    simulator is then in the middle of its messages), and start it again at once."""
    try:
        for target in targets:
            while deliveries(engine) < target:
                if stop.wait(0.005):
                    return
            api.kill()
            api.kills.append(deliveries(engine))
            api.start()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_kill_9_of_the_api_mid_lifecycle_ends_as_an_uninterrupted_run(
        pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    # the simulator sends about 2.5 messages per payment: every kill lands within them
    targets = sorted(rng.sample(range(20, 2 * PAYMENTS), KILLS))
    api = KillableApi()
    with lifecycle_stack(Settings(database_url=pg_url, data_dir=tmp_path,
                                  authorization_deadline_ms=CALM_DEADLINE_MS), cardholders=20,
                         api=api.serve) as s:
        stop = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(target=killer, args=(api, s.engine, targets, stop, errors),
                                  daemon=True)
        thread.start()
        try:
            # while it restarts, the network sends again: up to ~25 s of attempts
            result = run_lifecycle(s, PAYMENTS, seed=SEED, duplicates=0.1, reorder=0.2,
                                   timeout=600, attempts=15)
        finally:
            stop.set()
            thread.join(timeout=120)
        total = deliveries(s.engine)
    assert errors == []
    print("deliveries recorded at each kill:", api.kills, "of", total)
    assert len(api.kills) == KILLS and all(n < total for n in api.kills), (api.kills, total)

    assert_everything_agrees(result, min_spent=PAYMENTS // 10)

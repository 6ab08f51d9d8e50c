"""Two `cardpay project` processes in one Kafka consumer group share a 4-partition topic; one is
killed with SIGKILL mid-run at a seeded point, the other takes its partitions over (a
rebalance), the killed one is started again (another rebalance) and the last payments are
published through the relay to both. Nothing is lost or applied twice: the read model equals a
fresh single-consumer projection of the topic, the processes' applied counts add up to the
number of events, and the stored positions are the end offsets.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, func, select

from cardpay.kafka.adapters import KafkaFeed
from cardpay.postgres.schema import consumer_positions, outbox, quarantine
from projector.runner import Projector
from tests.fakes.projection import FakeProjectionStore
from tests.support.workload import expected_rows, payment_events, stored_rows, write

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SEED = 20261202
ASSIGNMENT = re.compile(r"group \S+: (assigned|revoked) partitions (\d+(?:,\d+)*|none)")
APPLIED = re.compile(r"applied (\d+) events \(skipped (\d+) delivered again, (\d+) applied by "
                     r"another process\)")


class Member:
    """One `cardpay -v project --batch-size 10` process, its output in files."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardpay.cli.main", "-v", "project", "--batch-size",
                 "10"], cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=err)

    def partitions(self) -> frozenset[int] | None:
        """What the group gave this process last (None: nothing yet), from its log."""
        owned: frozenset[int] | None = None
        for kind, listed in ASSIGNMENT.findall(self.err.read_text(errors="replace")):
            parts = frozenset() if listed == "none" else frozenset(map(int, listed.split(",")))
            owned = parts if kind == "assigned" else (owned or frozenset()) - parts
        return owned

    def alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited: {self.log()}"

    def log(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def stop(self) -> tuple[int, int, int]:
        """SIGTERM; (applied, delivered again, fenced) as the process prints them."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log()
        found = APPLIED.search(self.out.read_text())
        assert found, self.out.read_text() + self.log()
        applied, again, fenced = map(int, found.groups())
        return applied, again, fenced


def _relay(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "relay", "--until-idle",
                             "--batch-size", "200"], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(relay: subprocess.Popen[bytes]) -> None:
    _out, err = relay.communicate(timeout=120)
    assert relay.returncode == 0, err.decode()[-2000:]


def _wait(what: str, done: Callable[[], bool], members: list[Member],
          timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for member in members:
            member.alive()
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}; " + " | ".join(
            f"{m.name}: {m.log()[-800:]}" for m in members)
        time.sleep(0.02)


def _positions(engine: Engine, topic: str) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(consumer_positions.c.source, consumer_positions.c.position)
                            .where(consumer_positions.c.consumer == "payments"))
        return {int(source.rsplit(":", 1)[1]): int(position) for source, position in rows
                if source.startswith(f"{topic}:")}


def _count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where))
                   .scalar_one())


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _fresh_projection(bootstrap: str, topic: str) -> FakeProjectionStore:
    """One consumer, every partition, from the start: the projection nobody interrupted."""
    store = FakeProjectionStore()
    projector = Projector("fresh", KafkaFeed(bootstrap, topic), store.uow, batch_size=1000)
    await projector.start()
    try:
        await projector.run_until_idle(idle_polls=3, timeout=1.0)
    finally:
        await projector.stop()
    return store


def test_killed_group_member_loses_and_duplicates_nothing(
        pg_url: str, pg_engine: Engine, kafka_broker: Any, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    topic = f"rebalance-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, PARTITIONS)
    bootstrap = kafka_broker.bootstrap_servers
    payments = payment_events(1400, seed=SEED)
    total = sum(len(events) for events in payments)
    assert total >= 3000
    # The last payments come after the restart, so the restarted member has its share to do.
    first_wave, second_wave = payments[:1150], payments[1150:]
    write(pg_engine, first_wave, outbox_topic=topic)
    env = {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_KAFKA_BOOTSTRAP": bootstrap,
           "CARDPAY_KAFKA_TOPIC": topic, "CARDPAY_KAFKA_GROUP": f"test-{topic}"}

    # Both members join before anything is published, so each applies only its own share.
    members = [Member("a", env, tmp_path), Member("b", env, tmp_path)]
    everything = frozenset(range(PARTITIONS))

    def split() -> bool:
        owned = [m.partitions() for m in members]
        return (all(owned) and owned[0] is not None and owned[1] is not None
                and not owned[0] & owned[1] and owned[0] | owned[1] == everything)

    _wait("the two members share the partitions", split, members)
    victim, survivor = (members if rng.random() < 0.5 else members[::-1])
    victims = victim.partitions()
    assert victims is not None

    relay = _relay(env)
    threshold = rng.randint(100, 400)

    def victim_progress() -> int:
        return sum(v for p, v in _positions(pg_engine, topic).items() if p in victims)

    _wait(f"the victim applies {threshold} records", lambda: victim_progress() >= threshold,
          members)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=30)
    # Read before the survivor can take over (the group waits a session timeout, 10 s), and
    # after a COMMIT the victim sent just before it died has certainly been processed.
    time.sleep(0.5)
    at_kill = _positions(pg_engine, topic)
    rows_at_kill = len(stored_rows(pg_engine))
    assert survivor.partitions() == everything - victims, "a rebalance before the kill"
    killed_applied = sum(at_kill.get(p, 0) for p in victims)

    _finish(relay)
    first_ends = asyncio.run(_end_offsets(bootstrap, topic))
    assert any(at_kill.get(p, 0) < first_ends[p] for p in victims), "the victim had finished"
    assert 0 < rows_at_kill < len(first_wave), "the kill did not land mid-run"

    _wait("the survivor takes the victim's partitions", lambda: survivor.partitions() == everything,
          [survivor])
    restarted = Member("a2", env, tmp_path)
    pair = [survivor, restarted]

    def shared_again() -> bool:
        mine, theirs = restarted.partitions(), survivor.partitions()
        return bool(mine) and theirs is not None and mine | theirs == everything and not (
            mine & theirs)

    _wait("the restarted member gets partitions back", shared_again, pair)
    write(pg_engine, second_wave, outbox_topic=topic)
    _finish(_relay(env))
    assert _count(pg_engine, outbox, outbox.c.published_at.is_not(None)) == total
    ends = asyncio.run(_end_offsets(bootstrap, topic))
    assert sum(ends.values()) == total
    _wait("every partition is projected to its end",
          lambda: _positions(pg_engine, topic) == ends, pair)

    counts = [survivor.stop(), restarted.stop()]
    applied = killed_applied + sum(c[0] for c in counts)
    assert applied == total, (killed_applied, counts)       # each event applied exactly once
    assert all(c[0] > 0 for c in counts), counts
    assert [c[1] for c in counts] == [0, 0], counts          # none delivered twice to a row
    # Every assignment sought the stored offset: nothing fell behind it to be fenced.
    assert [c[2] for c in counts] == [0, 0], counts
    assert _count(pg_engine, quarantine) == 0                # no gap, no out-of-order

    fresh = asyncio.run(_fresh_projection(bootstrap, topic))
    assert stored_rows(pg_engine) == fresh.rows == expected_rows(payments)
    assert fresh.quarantined == []
    assert _positions(pg_engine, topic) == ends

"""`cardpay projections rebuild|verify` on real PostgreSQL: the read models built again beside the
live ones while the live projector runs and events keep arriving, compared at the same feed
position, swapped in; a live row that differs aborts with that row and swaps nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cardpay.bootstrap import payments_projector
from cardpay.bootstrap.project import READ_MODELS, run_projector
from cardpay.bootstrap.rebuild import RebuildError, RebuildMismatch, rebuild_projection
from cardpay.settings import Settings
from tests.support.cli import run_cardpay
from tests.support.indexing import project
from tests.support.workload import expected_rows, payment_events, stored_rows, write

pytestmark = pytest.mark.integration
TABLES = READ_MODELS["payments"]


def indexes(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {str(n) for (n,) in conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": table})}


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(n) for (n,) in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'rm_%'"))}


class LiveProjector:
    """`cardpay project`'s loop on a thread, until stopped."""

    def __init__(self, engine: Engine) -> None:
        self.projector = payments_projector(Settings(), engine, batch_size=100)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(run_projector(self.projector, self.stop,
                                                   poll_timeout=0.05))

    def __enter__(self) -> LiveProjector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)


def test_a_rebuild_while_events_arrive_is_swapped_in_and_equals_the_feed(
        pg_engine: Engine) -> None:
    payments = payment_events(1_200, seed=5)
    write(pg_engine, payments[:600], outbox_topic=None)
    before = indexes(pg_engine, "rm_payments")
    with pytest.raises(RebuildError, match="no stored position yet"):
        rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=True)

    seen: list[tuple[int, int]] = []
    with LiveProjector(pg_engine):
        writer = threading.Thread(target=write, args=(pg_engine, payments[600:]),
                                  kwargs={"outbox_topic": None, "per_transaction": 10})
        for _ in range(600):  # the live projector has made its first batches
            if len(stored_rows(pg_engine)) >= 300:
                break
            threading.Event().wait(0.05)
        writer.start()
        result = rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=True,
                                    batch_size=200,
                                    progress=lambda done, total: seen.append((done, total)))
        writer.join(timeout=120)
        # the live projector carries on, on the swapped-in tables, to the end of the feed
        for _ in range(600):
            if len(stored_rows(pg_engine)) == len(payments):
                break
            threading.Event().wait(0.1)
    assert result.swapped and result.equal and result.applied > 0
    assert all(t.rows_live == t.rows_rebuilt for t in result.tables)
    assert seen and seen[-1][0] >= seen[-1][1] > 0
    assert stored_rows(pg_engine) == expected_rows(payments)
    assert indexes(pg_engine, "rm_payments") == before  # the live names, not the shadow's
    assert not {t for t in tables(pg_engine) if t.endswith("__rebuild")}
    with pg_engine.connect() as conn:
        consumers = {c for (c,) in conn.execute(text(
            "SELECT DISTINCT consumer FROM consumer_positions"))}
    assert consumers == {"payments"}

    again = rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=False)
    assert again.equal and not again.swapped


def test_a_live_row_that_differs_aborts_with_the_row_and_swaps_nothing(
        pg_engine: Engine, pg_url: str) -> None:
    payments = payment_events(50, seed=6)
    write(pg_engine, payments, outbox_topic=None)
    project(pg_engine)
    victim = payments[7][0].stream_id
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE rm_payments SET spent = spent + 1 WHERE payment_id = :p"),
                     {"p": victim})
        conn.execute(text("UPDATE rm_daily SET approved = approved + 5"))

    with pytest.raises(RebuildMismatch) as caught:
        rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=True)
    result = caught.value.result
    assert not result.swapped
    by_table = {t.table: t for t in result.tables}
    assert [r["payment_id"] for r in by_table["rm_payments"].only_live] == [victim]
    assert [r["payment_id"] for r in by_table["rm_payments"].only_rebuilt] == [victim]
    assert not by_table["rm_daily"].equal
    with pg_engine.connect() as conn:  # the live tables are as they were
        spent = conn.execute(text("SELECT spent FROM rm_payments WHERE payment_id = :p"),
                             {"p": victim}).scalar_one()
    assert int(spent) == expected_rows(payments)[victim].spent + 1
    assert not {t for t in tables(pg_engine) if t.endswith("__rebuild")}

    env = {"CARDPAY_DATABASE_URL": pg_url}
    verify = run_cardpay(("projections", "verify", "payments"), env)
    assert verify.returncode == 1
    assert f"live only: {{'payment_id': '{victim}'" in verify.stdout
    assert verify.stderr.strip().endswith("nothing was swapped")
    as_json: Any = json.loads(run_cardpay(("projections", "verify", "payments", "--json"),
                                          env).stdout)
    assert as_json["equal"] is False

    fixed = run_cardpay(("projections", "rebuild", "payments"), env)  # cannot fix it: aborts
    assert fixed.returncode == 1
    with pg_engine.begin() as conn:  # put the row right, as a reset would
        conn.execute(text("UPDATE rm_payments SET spent = spent - 1 WHERE payment_id = :p"),
                     {"p": victim})
        conn.execute(text("UPDATE rm_daily SET approved = approved - 5"))
    ok = run_cardpay(("projections", "verify", "payments"), env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "rm_payments: equal" in ok.stdout and "not swapped" in ok.stdout
    unknown = run_cardpay(("projections", "verify", "nope"), env)
    assert unknown.returncode == 2 and "no projector named 'nope'" in unknown.stderr


def test_a_rebuild_that_flushes_often_reads_its_flushed_rows_back_and_equals_the_live_one(
        pg_engine: Engine) -> None:
    """Flushes every few rows: payments whose later events come after a flush are read back
    from the shadow table and evolved further (the path a rebuild larger than its memory
    bound takes)."""
    payments = payment_events(300, seed=8)
    write(pg_engine, payments, outbox_topic=None)
    project(pg_engine)
    result = rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=True,
                                batch_size=37, flush_rows=5)
    assert result.equal and result.swapped
    assert result.applied == sum(len(events) for events in payments)
    assert stored_rows(pg_engine) == expected_rows(payments)


def test_a_second_rebuild_of_the_same_projector_is_refused_while_one_runs(
        pg_engine: Engine) -> None:
    payments = payment_events(20, seed=9)
    write(pg_engine, payments, outbox_topic=None)
    project(pg_engine)
    with pg_engine.connect() as holder:  # what a running rebuild holds
        holder.execute(text("SELECT pg_advisory_lock(hashtext('rebuild:payments'))"))
        with pytest.raises(RebuildError, match="running already"):
            rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=False)
        holder.execute(text("SELECT pg_advisory_unlock(hashtext('rebuild:payments'))"))
        holder.commit()
    assert rebuild_projection(Settings(), pg_engine, "payments", TABLES, swap=False).equal

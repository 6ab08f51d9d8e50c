"""The supervision loop on a fake clock: retries, backoff bounds and jitter, stop, fatal, recovery."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from cardpay.runtime.supervise import Backoff, GaveUp, supervise, supervised_errors

pytestmark = pytest.mark.unit


class FakeTime:
    """A monotonic clock that only moves when the loop sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


class Script:
    """A step that plays a script: an exception is raised, an int is returned as work done."""

    def __init__(self, *outcomes: int | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else 0
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def errors_counted(registry: CollectorRegistry, component: str, error: str) -> float:
    value = registry.get_sample_value("cardpay_supervised_errors_total",
                                      {"component": component, "error": error})
    return value or 0.0


def test_failed_steps_are_retried_with_recovery_until_they_succeed() -> None:
    fake = FakeTime()
    registry = CollectorRegistry()
    step = Script(ConnectionError("down"), TimeoutError("slow"), 5, 0)
    recovered: list[str] = []

    async def recover(exc: Exception) -> None:
        recovered.append(type(exc).__name__)

    outcome = asyncio.run(supervise(
        step, component="relay", stop=asyncio.Event(), backoff=Backoff(1.0, 30.0, 0.0),
        recover=recover, until_idle=True, errors=supervised_errors(registry),
        sleep=fake.sleep, clock=fake.clock))

    assert outcome == "idle"
    assert step.calls == 4  # fail, fail, work, idle: the failed turns were tried again
    assert recovered == ["ConnectionError", "TimeoutError"]  # once per failure, before the retry
    assert fake.sleeps == [1.0, 2.0]
    assert errors_counted(registry, "relay", "ConnectionError") == 1
    assert errors_counted(registry, "relay", "TimeoutError") == 1


def test_backoff_grows_is_capped_and_resets_after_a_success() -> None:
    fake = FakeTime()
    boom = RuntimeError("boom")
    step = Script(*[boom] * 7, 1, boom, 0)

    asyncio.run(supervise(step, component="p", stop=asyncio.Event(),
                          backoff=Backoff(initial=0.5, maximum=10.0, jitter=0.0),
                          until_idle=True, sleep=fake.sleep, clock=fake.clock))

    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 0.5]


def test_jitter_stays_within_its_bounds_and_spreads_the_delays() -> None:
    random.seed(7)
    backoff = Backoff(initial=1.0, maximum=20.0, jitter=0.5)
    for attempt in range(1, 10):
        base = min(20.0, 2.0 ** (attempt - 1))
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(base <= d <= min(20.0, base + 0.5) for d in samples), attempt
        if base + 0.5 <= 20.0:
            assert max(samples) - min(samples) > 0.3  # really spread, not a constant


def test_a_fatal_error_ends_the_loop_at_once_without_recovery() -> None:
    class TopicChanged(Exception):
        pass

    fake = FakeTime()
    step = Script(ConnectionError("down"), TopicChanged("recreated"), 1)
    recovered: list[Exception] = []

    async def recover(exc: Exception) -> None:
        recovered.append(exc)

    with pytest.raises(TopicChanged):
        asyncio.run(supervise(step, component="p", stop=asyncio.Event(), recover=recover,
                              fatal=(TopicChanged,), sleep=fake.sleep, clock=fake.clock))
    assert step.calls == 2
    assert len(fake.sleeps) == 1 and len(recovered) == 1  # only for the transient failure


def test_stop_during_a_backoff_ends_the_loop_without_another_step() -> None:
    fake = FakeTime()
    stop = asyncio.Event()
    fake.on_sleep = stop.set
    step = Script(*[ConnectionError("down")] * 5)

    assert asyncio.run(supervise(step, component="r", stop=stop, sleep=fake.sleep,
                                 clock=fake.clock)) == "stopped"
    assert step.calls == 1


def test_a_stopped_loop_runs_no_step_and_a_running_one_stops_between_steps() -> None:
    step = Script(1)
    stop = asyncio.Event()
    stop.set()
    assert asyncio.run(supervise(step, component="r", stop=stop)) == "stopped"
    assert step.calls == 0

    async def forever() -> tuple[str, int]:
        stop = asyncio.Event()
        busy = Script(*[1] * 10_000)
        task = asyncio.create_task(supervise(busy, component="r", stop=stop))
        while busy.calls < 3:
            await asyncio.sleep(0)
        stop.set()
        return await asyncio.wait_for(task, 5), busy.calls

    outcome, calls = asyncio.run(forever())
    assert outcome == "stopped" and 3 <= calls < 10_000


def test_the_real_sleep_wakes_up_when_stop_is_set() -> None:
    async def go() -> float:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(supervise(Script(*[OSError("x")] * 3), component="r",
                                             stop=stop, backoff=Backoff(60.0, 60.0, 0.0)))
        await asyncio.sleep(0.05)
        stop.set()
        assert await asyncio.wait_for(task, 5) == "stopped"
        return loop.time() - started

    assert asyncio.run(go()) < 5  # not the 60 s backoff


def test_gives_up_after_failing_for_the_given_time() -> None:
    fake = FakeTime()
    step = Script(*[ConnectionError(f"refused {i}") for i in range(100)])

    with pytest.raises(GaveUp) as caught:
        asyncio.run(supervise(step, component="project", stop=asyncio.Event(),
                              backoff=Backoff(1.0, 4.0, 0.0), give_up_after=10.0,
                              sleep=fake.sleep, clock=fake.clock))
    assert isinstance(caught.value.last, ConnectionError)
    assert fake.now == pytest.approx(10.0)  # the last backoff is cut to the time left
    assert fake.sleeps == [1.0, 2.0, 4.0, 3.0]
    assert "refused 4" in str(caught.value)


def test_a_success_restarts_the_give_up_clock() -> None:
    fake = FakeTime()
    down = ConnectionError("down")
    step = Script(down, down, down, 1, down, down, down, 0)

    assert asyncio.run(supervise(step, component="p", stop=asyncio.Event(),
                                 backoff=Backoff(2.0, 2.0, 0.0), give_up_after=7.0,
                                 until_idle=True, sleep=fake.sleep, clock=fake.clock)) == "idle"
    assert fake.sleeps == [2.0] * 6


def test_a_failing_recovery_counts_as_the_next_failure_and_is_tried_again() -> None:
    fake = FakeTime()
    registry = CollectorRegistry()
    attempts: list[int] = []

    async def recover(exc: Exception) -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionRefusedError("still down")

    step = Script(ConnectionError("lost"), 1, 0)
    asyncio.run(supervise(step, component="relay", stop=asyncio.Event(), recover=recover,
                          until_idle=True, backoff=Backoff(1.0, 8.0, 0.0),
                          errors=supervised_errors(registry), sleep=fake.sleep,
                          clock=fake.clock))
    assert len(attempts) == 3
    assert step.calls == 3  # the step ran again only once the recovery had succeeded
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert errors_counted(registry, "relay", "ConnectionRefusedError") == 2


def test_until_idle_waits_for_several_idle_steps_in_a_row() -> None:
    step = Script(0, 3, 0, 0, 9)
    assert asyncio.run(supervise(step, component="p", stop=asyncio.Event(), until_idle=True,
                                 idle_steps=2)) == "idle"
    assert step.calls == 4


def test_the_give_up_clock_starts_when_the_first_failing_step_started() -> None:
    """A step that takes long to fail (a connect timeout) counts its own duration."""
    fake = FakeTime()

    async def slow_failure() -> int:
        fake.now += 8.0
        raise TimeoutError("connect timed out")

    with pytest.raises(GaveUp):
        asyncio.run(supervise(slow_failure, component="p", stop=asyncio.Event(),
                              backoff=Backoff(1.0, 1.0, 0.0), give_up_after=10.0,
                              sleep=fake.sleep, clock=fake.clock))
    assert fake.sleeps == [1.0]  # 8 s + 1 s, then the second failure ends at 17 s > 10 s

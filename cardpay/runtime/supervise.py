"""One supervision loop for every long-running process: run a step, back off on failure, stop.

    outcome = await supervise(
        step,                     # async () -> int: work done this turn, 0 when idle
        component="relay",        # log prefix and the `component` label of the error metric
        stop=stop,                # asyncio.Event (SIGINT/SIGTERM): ends the loop between steps
        backoff=Backoff(initial=0.2, maximum=30.0, jitter=0.5),
        recover=reset,            # optional async (exc) -> None, run after the backoff of each
                                  # failure and before the next step (restart a feed, reset a
                                  # producer); if it fails, that is the next failure
        fatal=(TopicChanged,),    # exception types re-raised at once instead of retried
        until_idle=False,         # True: return "idle" after `idle_steps` idle steps in a row
        idle_steps=1,
        idle_sleep=0.0,           # pause after an idle step when running for ever
        give_up_after=None,       # seconds of failures without a success -> raise GaveUp
        errors=counter,           # optional prometheus Counter labelled (component, error)
        sleep=None, clock=None,   # injectable for tests: async sleep(seconds, stop), monotonic()
    )  # -> "stopped" | "idle"

A sync step runs in a thread: `step=lambda: asyncio.to_thread(listener.run_once)`.

Why one loop: a failed step must never be skipped. The step itself must leave nothing half done
(its effects commit with its position, or not at all); the loop only decides when to try again,
and `recover` puts in-memory state (a feed that already moved past the failed batch, a producer
that cannot be reused) back in line with what was committed.

The wait before retry n (n = 1, 2, ...) is tenacity's `wait_exponential_jitter`:
`min(maximum, initial * 2**(n-1) + uniform(0, jitter))`, so concurrent restarts spread out and the
delay never exceeds `maximum`. A success resets n. Each failure is logged as one line (no
traceback: the cause is known to be transient or it would be in `fatal`) and counted by
exception class name, a bounded label set. KeyboardInterrupt and task cancellation are not
caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from cardpay.errors import CardpayError

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[int]]
Recover = Callable[[Exception], Awaitable[None]]
Sleep = Callable[[float, asyncio.Event], Awaitable[None]]
Outcome = Literal["stopped", "idle"]


class GaveUp(CardpayError):
    """Every step failed for `give_up_after` seconds; `last` is the last failure."""

    def __init__(self, component: str, seconds: float, last: Exception) -> None:
        super().__init__(f"{component}: still failing after {seconds:.0f}s: {describe(last)}")
        self.last = last
        self.seconds = seconds


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1 for the first retry after a failure)."""
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        wait = wait_exponential_jitter(multiplier=self.initial, max=self.maximum,
                                       jitter=self.jitter)
        return float(wait(state))


DEFAULT_BACKOFF = Backoff()


def supervised_errors(registry: CollectorRegistry) -> Counter:
    """The error counter a process passes to `supervise` (one per registry)."""
    return Counter("cardpay_supervised_errors_total",
                   "Failed steps of a supervised loop (retried unless fatal)",
                   ["component", "error"], registry=registry)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line logs."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    """Sleep, but wake up as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def supervise(
    step: Step,
    *,
    component: str,
    stop: asyncio.Event,
    backoff: Backoff = DEFAULT_BACKOFF,
    recover: Recover | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    until_idle: bool = False,
    idle_steps: int = 1,
    idle_sleep: float = 0.0,
    give_up_after: float | None = None,
    errors: Counter | None = None,
    sleep: Sleep | None = None,
    clock: Callable[[], float] | None = None,
) -> Outcome:
    """Run `step` until `stop` is set (or until idle); see the module docstring."""
    pause = sleep or sleep_or_stop
    now = clock or time.monotonic
    failures = 0
    failing_since: float | None = None
    idle = 0
    needs_recovery: Exception | None = None
    while not stop.is_set():
        attempt_started = now()
        try:
            if needs_recovery is not None and recover is not None:
                await recover(needs_recovery)
            needs_recovery = None
            work = await step()
        except fatal:
            raise
        except Exception as exc:
            failures += 1
            if failing_since is None:  # the streak began when its first failing step did
                failing_since = attempt_started
            if errors is not None:
                errors.labels(component=component, error=type(exc).__name__).inc()
            needs_recovery = exc
            delay = backoff.delay(failures)
            if give_up_after is not None:
                remaining = give_up_after - (now() - failing_since)
                if remaining <= 0:
                    raise GaveUp(component, give_up_after, exc) from exc
                delay = min(delay, remaining)
            log.warning("%s: %s; retry %d in %.1fs", component, describe(exc), failures, delay)
            await pause(delay, stop)
            continue
        failures, failing_since = 0, None
        idle = 0 if work else idle + 1
        if until_idle and idle >= idle_steps:
            return "idle"
        if idle and idle_sleep > 0:
            await pause(idle_sleep, stop)
        else:
            await asyncio.sleep(0)  # let signal handlers and other tasks run between steps
    return "stopped"


async def supervise_feed(
    start: Callable[[], Awaitable[None]],
    turn: Callable[[], Awaitable[int]],
    stop_feed: Callable[[], Awaitable[None]],
    *,
    component: str,
    stop: asyncio.Event,
    **options: Any,
) -> Outcome:
    """`supervise` for a consumer of a feed: `start` it (from its stored positions) before the
    first turn and again after every failed one, because the feed moved past the failed batch
    in memory; `stop_feed` after a failure and at the end. `options` go to `supervise`."""
    started = False

    async def step() -> int:
        nonlocal started
        if not started:
            await start()
            started = True
        return await turn()

    async def recover(exc: Exception) -> None:
        nonlocal started
        started = False
        with contextlib.suppress(Exception):
            await stop_feed()

    try:
        return await supervise(step, component=component, stop=stop, recover=recover,
                               **options)
    finally:
        with contextlib.suppress(Exception):
            await stop_feed()

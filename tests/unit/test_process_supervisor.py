"""The restart policy of `cardpay run`'s supervisor, on fake processes and a fake clock: when a
child that exits is started again, how the delay grows and resets, when it gives up, and how
the children are stopped."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

import pytest

from cardpay.bootstrap.run import supervise
from cardpay.runtime.processes import ChildSpec, RestartPolicy, Supervisor, describe_status
from cardpay.runtime.supervise import Backoff

pytestmark = pytest.mark.unit


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeChild:
    pid: int
    status: int | None = None
    signals: list[int] = field(default_factory=list)
    stops_on_term: bool = True

    def poll(self) -> int | None:
        return self.status

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.status is None and (sig == signal.SIGKILL or self.stops_on_term):
            self.status = -sig


class World:
    def __init__(self, names: tuple[str, ...] = ("listen", "api"), **policy: float) -> None:
        self.clock = FakeClock()
        self.started: list[FakeChild] = []
        self.lines: list[str] = []
        self.by_name: dict[str, list[FakeChild]] = {n: [] for n in names}
        self.stops_on_term = True
        rules = RestartPolicy(backoff=Backoff(initial=0.5, maximum=4.0, jitter=0.0),
                              stable_after=policy.get("stable_after", 60.0),
                              max_restarts=int(policy.get("max_restarts", 5)),
                              window=policy.get("window", 60.0))

        def sleep(seconds: float) -> None:
            self.clock.now += seconds

        self.supervisor = Supervisor([ChildSpec(n, ("cardpay", n)) for n in names],
                                     spawn=self.spawn, say=self.lines.append, policy=rules,
                                     clock=self.clock, sleep=sleep)

    def spawn(self, spec: ChildSpec) -> FakeChild:
        child = FakeChild(100 + len(self.started), stops_on_term=self.stops_on_term)
        self.started.append(child)
        self.by_name[spec.name].append(child)
        return child

    def current(self, name: str) -> FakeChild:
        return self.by_name[name][-1]

    def crash(self, name: str, status: int = 1) -> None:
        self.current(name).status = status
        self.supervisor.step()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.supervisor.step()


def test_a_child_that_exits_is_restarted_after_the_backoff_and_the_others_keep_running() -> None:
    w = World()
    w.supervisor.start_all()
    api = w.current("api")
    w.advance(5)
    w.crash("listen", status=-signal.SIGKILL)
    assert "listen (pid 100) was killed by SIGKILL after 5.0s; restarting in 0.5s" in w.lines
    assert w.supervisor.pids() == {"api": api.pid}
    w.advance(0.4)
    assert len(w.by_name["listen"]) == 1  # not yet
    w.advance(0.1)
    assert len(w.by_name["listen"]) == 2
    assert w.supervisor.pids() == {"listen": w.current("listen").pid, "api": api.pid}
    assert w.lines[-1] == f"started listen (pid {w.current('listen').pid}) (restart 1)"
    assert w.supervisor.restarts() == {"listen": 1, "api": 0}
    assert api.signals == []


def test_the_delay_doubles_while_the_child_keeps_failing_up_to_the_cap() -> None:
    w = World(max_restarts=100, window=1.0)
    w.supervisor.start_all()
    delays = []
    for _ in range(6):
        w.advance(2)  # runs 2 s each time: not stable
        w.crash("listen")
        delays.append(w.lines[-1].rsplit("restarting in ", 1)[1])
        w.advance(10)  # past any delay: started again
    assert delays == ["0.5s", "1.0s", "2.0s", "4.0s", "4.0s", "4.0s"]
    assert w.supervisor.failed is None


def test_a_child_that_ran_long_enough_starts_over_at_the_first_delay() -> None:
    w = World(stable_after=30, max_restarts=100, window=1.0)
    w.supervisor.start_all()
    for _ in range(3):
        w.advance(1)
        w.crash("listen")
        w.advance(10)
    assert w.lines[-2].endswith("restarting in 2.0s")
    w.advance(31)
    w.crash("listen")
    assert w.lines[-1].endswith("restarting in 0.5s")


def test_a_child_exiting_too_often_fails_the_supervisor_with_one_clear_line() -> None:
    w = World(max_restarts=3, window=60)
    w.supervisor.start_all()
    for _ in range(2):
        w.crash("api", status=2)
        w.advance(10)
    assert w.supervisor.failed is None
    w.crash("api", status=2)
    assert w.supervisor.failed == ("api is restarting too often: it exited 3 times within 60s "
                                   "(last: exited with status 2); see its output above")
    assert "giving up" in w.lines[-1]
    w.advance(100)
    assert len(w.by_name["api"]) == 3  # no fourth start


def test_exits_spread_wider_than_the_window_never_give_up() -> None:
    w = World(max_restarts=3, window=60)
    w.supervisor.start_all()
    for _ in range(10):
        w.advance(31)
        w.crash("api")
    assert w.supervisor.failed is None
    assert w.supervisor.restarts()["api"] == 9


def test_max_restarts_0_restarts_for_ever() -> None:
    w = World(max_restarts=0, window=60)
    w.supervisor.start_all()
    for _ in range(20):
        w.crash("api", status=-signal.SIGKILL)
        w.advance(10)
    assert w.supervisor.failed is None
    assert w.supervisor.restarts()["api"] == 20


def test_stop_terms_every_child_then_kills_what_is_left_after_the_grace() -> None:
    w = World()
    w.stops_on_term = False  # both ignore SIGTERM
    w.supervisor.start_all()
    listen, api = w.current("listen"), w.current("api")
    listen.stops_on_term = True
    start = w.clock.now
    w.supervisor.stop(grace=5)
    assert listen.signals[0] == signal.SIGTERM and listen.status == -signal.SIGTERM
    assert api.signals == [signal.SIGTERM, signal.SIGKILL]
    assert api.status == -signal.SIGKILL
    assert 5 <= w.clock.now - start < 5.2
    assert any("did not stop within 5s" in line for line in w.lines)
    w.advance(100)
    assert len(w.started) == 2  # nothing restarted after a stop


def test_a_pending_restart_is_cancelled_by_stop() -> None:
    w = World()
    w.supervisor.start_all()
    w.crash("listen")
    w.supervisor.stop(grace=1)
    w.advance(10)
    assert len(w.by_name["listen"]) == 1


def test_names_must_be_unique() -> None:
    with pytest.raises(ValueError):
        Supervisor([ChildSpec("a", ()), ChildSpec("a", ())], spawn=lambda s: FakeChild(1),
                   say=print)


def test_exit_statuses_are_described() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3) == "exited with status 3"
    assert describe_status(-signal.SIGTERM) == "was killed by SIGTERM"


def test_readiness_is_announced_once_every_check_answers_then_the_loop_runs_until_stop(
) -> None:
    w = World()
    w.supervisor.start_all()
    calls: list[str] = []
    announced: list[int] = []
    stop = threading.Event()

    def answers(url: str) -> bool:
        calls.append(url)
        return url == "a" or calls.count("b") >= 3

    def announce() -> None:
        announced.append(len(calls))
        w.crash("listen")  # after readiness, a crash is still restarted
        w.advance(1)
        stop.set()

    status = supervise(w.supervisor, stop, {"A": "a", "B": "b"}, announce, timeout=3600,
                       say=w.lines.append, answers=answers, interval=0)
    assert status == 0
    assert announced == [4]  # a answered at once and is not asked again; b on its third try
    assert len(w.by_name["listen"]) == 2


def test_readiness_waits_for_every_child_to_run() -> None:
    w = World()
    w.supervisor.start_all()
    w.current("listen").status = 1  # exits before the checks answer: restarting in 0.5 s
    announced: list[float] = []
    stop = threading.Event()

    def announce() -> None:
        announced.append(w.clock.now)
        stop.set()

    def wait(seconds: float) -> bool:  # each turn takes 0.2 s of the fake clock
        w.clock.now += 0.2
        return False

    stop.wait = wait  # type: ignore[method-assign]
    assert supervise(w.supervisor, stop, {"A": "a"}, announce, timeout=3600,
                     say=w.lines.append, answers=lambda url: True, interval=0) == 0
    assert len(w.by_name["listen"]) == 2  # announced only once the restart ran
    assert announced and w.supervisor.all_running()


def test_a_child_restarting_too_often_ends_the_loop_with_status_1() -> None:
    w = World(max_restarts=1)
    w.supervisor.start_all()
    w.current("api").status = 1
    status = supervise(w.supervisor, threading.Event(), {}, lambda: None, timeout=3600,
                       say=w.lines.append, answers=lambda url: True, interval=0)
    assert status == 1
    assert w.supervisor.failed is not None and w.supervisor.failed.startswith("api ")


def test_not_ready_in_time_ends_the_loop_naming_what_did_not_answer() -> None:
    w = World()
    w.supervisor.start_all()
    lines: list[str] = []
    status = supervise(w.supervisor, threading.Event(), {"API": "http://x/healthz"},
                       lambda: None, timeout=0.0, say=lines.append,
                       answers=lambda url: False, interval=0)
    assert status == 1
    assert lines == ["not ready within 0s: API (http://x/healthz) does not answer; see the "
                     "output above"]

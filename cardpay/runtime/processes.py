"""Supervision of child processes: restart what exits, back off, give up on a crash loop.

`cardpay run` starts each long-running command (`cardpay listen`, `cardpay api`, ...) as its
own OS process, so a crash of one takes nothing else down, and hands them to `Supervisor`:

    supervisor = Supervisor(specs, spawn=spawn_child, say=print_line)
    supervisor.start_all()
    while not stopping and supervisor.failed is None:
        supervisor.step()          # reap what exited, restart what is due
        time.sleep(0.2)
    supervisor.stop(grace=10.0)    # SIGTERM to every process group, SIGKILL after the grace

The policy is Erlang's and systemd's: a child that exits, whatever its status (a long-running
command never exits on its own), is restarted after `Backoff.delay(n)` for its n-th restart in
a row (exponential, capped; no jitter: a handful of local children need no spreading); a child
that ran `stable_after` seconds counts as healthy again and restarts after the first delay. A
child that exits `max_restarts` times within `window` seconds will not get better by retrying
(a bad setting, a node on another chain): the supervisor marks itself `failed` with one line
saying which child and its last exit status, and the caller stops everything.

Each child runs in its own session (process group), so a signal reaches whatever the child
itself started, and Ctrl-C in a terminal reaches only the parent, which stops the children in
order. Everything here takes its clock, sleep and spawn function as arguments: the policy is
unit-tested with fake processes and a fake clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from cardpay.runtime.supervise import Backoff


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: its name in logs and its command line and environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


class Child(Protocol):
    """A started process, as the supervisor uses it (`OsChild`, or a fake in tests)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None:
        """The exit status once it exited (negative: killed by that signal), else None."""

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group (nothing if it is gone)."""


Spawn = Callable[[ChildSpec], Child]


@dataclass(frozen=True)
class RestartPolicy:
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0,
                                                             jitter=0.0))
    stable_after: float = 60.0
    """A child that ran this long before exiting restarts after the first delay again."""
    max_restarts: int = 5
    window: float = 60.0
    """`max_restarts` exits within `window` seconds: the child is failing, give up (0: never;
    for a harness that kills children on purpose, e.g. a chaos run)."""

    def delay(self, attempt: int) -> float:
        return self.backoff.delay(attempt)


def describe_status(status: int) -> str:
    """`exited with status 1`, `was killed by SIGKILL`."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


@dataclass
class _Slot:
    spec: ChildSpec
    child: Child | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    attempt: int = 0
    """Restarts in a row since the child last ran `stable_after` seconds."""
    exits: deque[float] = field(default_factory=deque)
    """When the child exited, within the last `window` seconds."""
    restarts: int = 0


class Supervisor:
    def __init__(self, specs: Sequence[ChildSpec], *, spawn: Spawn,
                 say: Callable[[str], None], policy: RestartPolicy = RestartPolicy(),
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._slots = [_Slot(spec) for spec in specs]
        self._spawn = spawn
        self._say = say
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self.failed: str | None = None
        """One line: the child that restarted too often, and how it last exited."""

    def start_all(self) -> None:
        for slot in self._slots:
            self._start(slot)

    def pids(self) -> dict[str, int]:
        """The running children's pids by name."""
        return {s.spec.name: s.child.pid for s in self._slots
                if s.child is not None and s.child.poll() is None}

    def restarts(self) -> dict[str, int]:
        return {s.spec.name: s.restarts for s in self._slots}

    def all_running(self) -> bool:
        return len(self.pids()) == len(self._slots)

    def step(self) -> None:
        """Reap the children that exited and schedule their restart (or give up); start those
        whose restart is due."""
        now = self._clock()
        for slot in self._slots:
            if slot.child is not None:
                status = slot.child.poll()
                if status is not None:
                    self._exited(slot, status, now)
            if self.failed is not None:
                return
            if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        slot.child = self._spawn(slot.spec)
        slot.started_at = self._clock()
        slot.restart_at = None
        again = f" (restart {slot.restarts})" if slot.restarts else ""
        self._say(f"started {slot.spec.name} (pid {slot.child.pid}){again}")

    def _exited(self, slot: _Slot, status: int, now: float) -> None:
        assert slot.child is not None
        pid, ran = slot.child.pid, now - slot.started_at
        slot.child.signal_group(signal.SIGKILL)  # what the child started dies with it
        slot.child = None
        slot.exits.append(now)
        while slot.exits and now - slot.exits[0] > self.policy.window:
            slot.exits.popleft()
        how = f"{slot.spec.name} (pid {pid}) {describe_status(status)} after {ran:.1f}s"
        if 0 < self.policy.max_restarts <= len(slot.exits):
            self.failed = (f"{slot.spec.name} is restarting too often: it exited "
                           f"{len(slot.exits)} times within {self.policy.window:.0f}s (last: "
                           f"{describe_status(status)}); see its output above")
            self._say(f"{how}; giving up: {self.failed}")
            return
        slot.attempt = 1 if ran >= self.policy.stable_after else slot.attempt + 1
        delay = self.policy.delay(slot.attempt)
        slot.restart_at = now + delay
        self._say(f"{how}; restarting in {delay:.1f}s")

    def stop(self, grace: float) -> None:
        """SIGTERM to every running child's process group; SIGKILL to what is left after
        `grace` seconds (and to every group, for grandchildren that outlived their parent)."""
        running = [s.child for s in self._slots if s.child is not None]
        for slot in self._slots:
            slot.restart_at = None
        for child in running:
            child.signal_group(signal.SIGTERM)
        deadline = self._clock() + grace
        while any(c.poll() is None for c in running) and self._clock() < deadline:
            self._sleep(0.05)
        for child in running:
            if child.poll() is None:
                self._say(f"pid {child.pid} did not stop within {grace:.0f}s: killing it")
            child.signal_group(signal.SIGKILL)
        for slot in self._slots:
            slot.child = None


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when this process dies
    without stopping it (Linux; None elsewhere), so a parent killed with SIGKILL leaves no
    child running.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only used from the main
    thread; elsewhere the caller's own stop is the only safety net.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    signal_number = int(sig)

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal_number)

    return set_pdeathsig


class OsChild:
    """A real child process in its own session; its output (stdout and stderr) is copied line
    by line to `out`, each line prefixed with the child's name. Should the parent die without
    stopping it (SIGKILL), the kernel sends it SIGTERM: it stops as on Ctrl-C."""

    def __init__(self, spec: ChildSpec, out: IO[str], lock: threading.Lock) -> None:
        self._process = subprocess.Popen(
            list(spec.argv), env=dict(spec.env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True, preexec_fn=parent_death_signal(signal.SIGTERM))
        self._copier = threading.Thread(target=self._copy, args=(spec.name, out, lock),
                                        name=f"output-{spec.name}", daemon=True)
        self._copier.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    def _copy(self, name: str, out: IO[str], lock: threading.Lock) -> None:
        assert self._process.stdout is not None
        with self._process.stdout as lines:
            for line in lines:
                with lock:
                    out.write(f"{name:<8}| {line.rstrip()}\n")
                    out.flush()


def os_spawner(out: IO[str], lock: threading.Lock) -> Spawn:
    def spawn(spec: ChildSpec) -> Child:
        return OsChild(spec, out, lock)

    return spawn

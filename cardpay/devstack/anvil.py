"""Start and stop a local Anvil node (the EVM node from the npm package `@foundry-rs/anvil`).

Nothing happens at import time. Typical use::

    with AnvilNode() as node:
        node.rpc("eth_blockNumber")
        ...  # node.rpc_url -> "http://127.0.0.1:<free port>"

Anvil binds 127.0.0.1 only. The process runs in its own process group, so `stop()`/`kill()` also
reach the real binary when the npm wrapper script (`node_modules/.bin/anvil`, a node process that
spawns the platform binary) is used. A node left running when the interpreter exits is killed by an
atexit hook; if this process is killed (SIGKILL), the kernel sends Anvil SIGINT (Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import requests

from cardpay.devstack.service import ManagedService
from cardpay.errors import CardpayError
from cardpay.runtime.processes import parent_death_signal

DEFAULT_CHAIN_ID = 31337
DEFAULT_STARTUP_TIMEOUT = 30.0
_LOG_TAIL_LINES = 40

# npm platform packages that carry the native anvil binary (see @foundry-rs/anvil const.mjs).
_PLATFORM_PACKAGES: dict[tuple[str, str], str] = {
    ("linux", "x86_64"): "anvil-linux-amd64",
    ("linux", "amd64"): "anvil-linux-amd64",
    ("linux", "aarch64"): "anvil-linux-arm64",
    ("linux", "arm64"): "anvil-linux-arm64",
    ("darwin", "x86_64"): "anvil-darwin-amd64",
    ("darwin", "arm64"): "anvil-darwin-arm64",
    ("win32", "amd64"): "anvil-win32-amd64",
}


class AnvilHarnessError(CardpayError, RuntimeError):
    """Anvil could not be found, started, reached or stopped."""


class AnvilRpcError(AnvilHarnessError):
    """A JSON-RPC call answered with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.error = error
        message = error.get("message") if isinstance(error, dict) else error
        super().__init__(f"{method} failed: {message}")


def repo_root() -> Path:
    """The source checkout this module lives in (cardpay/devstack/anvil.py -> repo)."""
    return Path(__file__).resolve().parents[2]


def _native_binary(root: Path) -> Path | None:
    machine = platform.machine().lower()
    package = _PLATFORM_PACKAGES.get((sys.platform, machine))
    if package is None:
        return None
    name = "anvil.exe" if sys.platform == "win32" else "anvil"
    return root / "node_modules" / "@foundry-rs" / package / "bin" / name


def find_anvil() -> str:
    """Path of the anvil executable.

    Order: env ``CARDPAY_ANVIL_BIN``; the native binary of the npm platform package under
    ``<repo>/node_modules/@foundry-rs/``; the npm wrapper ``<repo>/node_modules/.bin/anvil``;
    ``anvil`` on PATH.
    """
    override = os.environ.get("CARDPAY_ANVIL_BIN")
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(override)
        if found:
            return found
        raise AnvilHarnessError(f"CARDPAY_ANVIL_BIN={override!r} is not an executable file")
    root = repo_root()
    candidates = [_native_binary(root), root / "node_modules" / ".bin" / "anvil"]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise AnvilHarnessError(
        f"anvil not found: run `npm ci` in {root} (installs @foundry-rs/anvil pinned in "
        "package.json), or set CARDPAY_ANVIL_BIN to an anvil executable"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class AnvilNode(ManagedService):
    """One Anvil process on 127.0.0.1 and a free port; a context manager.

    ``block_time=None`` keeps Anvil's automine (one block per transaction, mined on arrival).
    ``state_path`` is passed as ``--state`` (load at start if the file exists, dump on a clean
    stop). Output goes to a log file (``log_path``) whose tail is put into startup errors.
    """

    HOST = "127.0.0.1"

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        state_path: str | os.PathLike[str] | None = None,
        anvil_bin: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.block_time = block_time
        self.state_path = Path(state_path) if state_path is not None else None
        self.anvil_bin = anvil_bin
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._session: requests.Session | None = None
        self._request_id = 0

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None or self._process is None:
            raise AnvilHarnessError("anvil is not running")
        return self._port

    @property
    def rpc_url(self) -> str:
        return f"http://{self.HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        """The anvil command line for a given port."""
        binary = self.anvil_bin or find_anvil()
        cmd = [binary, "--host", self.HOST, "--port", str(port), "--chain-id", str(self.chain_id)]
        if self.block_time is not None:
            cmd += ["--block-time", _format_seconds(self.block_time)]
        if self.state_path is not None:
            cmd += ["--state", str(self.state_path)]
        cmd += self.extra_args
        return cmd

    def start(self) -> Self:
        """Start anvil and wait until ``eth_chainId`` answers with the configured chain id."""
        if self._process is not None:
            raise AnvilHarnessError("anvil is already started")
        if self._log_path_arg is not None:
            self._log_path = self._log_path_arg
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="cardpay-anvil-")
            self._log_path = Path(self._tmpdir.name) / "anvil.log"
        attempts = 3  # the free port can be taken between probing and binding
        try:
            for attempt in range(1, attempts + 1):
                port = free_port(self.HOST)
                self._spawn(port)
                try:
                    self._wait_ready()
                    return self
                except _PortInUseError:
                    self._reap(kill=True)
                    if attempt == attempts:
                        raise AnvilHarnessError(
                            f"anvil could not bind a free port after {attempts} attempts\n"
                            + self.log_tail()
                        ) from None
        except BaseException:
            self._reap(kill=True)
            self._cleanup_files()
            raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop anvil gracefully (SIGINT: it dumps ``--state`` on the way out), kill if stuck."""
        if self._process is None:
            self._cleanup_files()
            return
        try:
            if self._process.poll() is None:
                self._signal(signal.SIGINT)
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(_SIGKILL)
                    self._process.wait(timeout=timeout)
            self._wait_group_gone(timeout)
        finally:
            self._reap(kill=True)
            self._cleanup_files()

    def kill(self) -> None:
        """Kill anvil at once (SIGKILL to its process group); no state dump."""
        self._reap(kill=True)
        self._cleanup_files()

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    # -- JSON-RPC --------------------------------------------------------------------------

    def rpc(self, method: str, params: Sequence[Any] | None = None, timeout: float = 30.0) -> Any:
        """Call a JSON-RPC method; returns ``result`` or raises AnvilRpcError."""
        if self._session is None:
            self._session = requests.Session()
        self._request_id += 1
        payload: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": self._request_id,
            "method": method,
            "params": list(params or []),
        }
        response = self._session.post(self.rpc_url, json=payload, timeout=timeout)
        response.raise_for_status()
        body = response.json()
        if "error" in body:
            raise AnvilRpcError(method, body["error"])
        return body.get("result")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of anvil's output, for error messages."""
        if self._log_path is None or not self._log_path.is_file():
            return "(no anvil log)"
        text = self._log_path.read_text(encoding="utf-8", errors="replace")
        tail = text.splitlines()[-lines:]
        return f"--- anvil output, last {len(tail)} lines ---\n" + "\n".join(tail)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        assert self._log_path is not None
        cmd = self.command(port)
        with open(self._log_path, "wb") as log:
            kwargs: dict[str, Any] = {}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                kwargs["start_new_session"] = True
                # SIGINT (Anvil dumps --state and exits) should this process die unstopped
                kwargs["preexec_fn"] = parent_death_signal(signal.SIGINT)
            try:
                self._process = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs
                )
            except OSError as exc:
                raise AnvilHarnessError(f"could not run {cmd[0]}: {exc}") from exc
        self._port = port
        atexit.register(self._atexit_kill)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortInUseError
                raise AnvilHarnessError(f"anvil exited with code {code} during startup\n{tail}")
            try:
                answer = self.rpc("eth_chainId", timeout=2.0)
            except (requests.RequestException, ValueError) as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            chain_id = int(answer, 16)
            if chain_id != self.chain_id:
                raise AnvilHarnessError(
                    f"anvil on port {self._port} reports chain id {chain_id}, "
                    f"expected {self.chain_id} (another node on that port?)"
                )
            return
        raise AnvilHarnessError(
            f"anvil did not answer eth_chainId within {self.startup_timeout:.0f}s "
            f"(last error: {last_error})\n{self.log_tail()}"
        )

    def _signal(self, sig: int) -> None:
        """Signal the process group, only while its leader is ours and not yet reaped."""
        if self._process is None or self._process.returncode is not None:
            return
        if sys.platform == "win32":
            if sig == _SIGKILL:
                self._process.kill()
            else:
                self._process.terminate()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    def _wait_group_gone(self, timeout: float) -> None:
        """Wait for the rest of the process group to exit, then kill leftovers.

        Only matters for the npm wrapper: it exits as soon as it has forwarded the signal, while
        the anvil binary (same group, started by us) may still be dumping its state.
        """
        if self._process is None or sys.platform == "win32":
            return
        pgid = self._process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, _SIGKILL)

    def _reap(self, *, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        if kill:
            self._signal(_SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        self._process = None
        self._port = None
        atexit.unregister(self._atexit_kill)
        if self._session is not None:
            self._session.close()
            self._session = None

    def _cleanup_files(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None

    def _atexit_kill(self) -> None:
        self._reap(kill=True)

    def __repr__(self) -> str:
        where = f"{self.HOST}:{self._port}" if self._port is not None else "stopped"
        return f"AnvilNode(chain_id={self.chain_id}, {where}, pid={self.pid})"


class _PortInUseError(Exception):
    pass


_SIGKILL: int = getattr(signal, "SIGKILL", 9)


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

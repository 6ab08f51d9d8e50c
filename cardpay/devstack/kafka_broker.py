"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) for tests and local runs.

The jars come from Maven Central through `tools/kafka/pom.xml` and are cached outside the repository
(`$CARDPAY_CACHE_DIR/kafka-<version>` or `~/.cache/cardpay/kafka-<version>`). The broker runs with the
system's Java, listens on 127.0.0.1 only, on free ports, with its data in a temporary directory unless
one is given. Nothing happens at import time.

    with KafkaBroker() as broker:
        broker.create_topic("payments", partitions=3)
        ...  # use broker.bootstrap_servers

For people: `python -m cardpay.devstack.kafka_broker` starts one and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from cardpay.devstack.service import ManagedService
from cardpay.errors import CardpayError
from cardpay.runtime.processes import parent_death_signal

KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).resolve().parents[2] / "tools" / "kafka" / "pom.xml"
HOST = "127.0.0.1"
NODE_ID = 1

_COMPLETE_MARKER = ".complete"
_MAVEN_TIMEOUT = 900.0
_FORMAT_TIMEOUT = 120.0
_STOP_TIMEOUT = 30.0
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 60
# The client JIT only: the broker is ready in about half the time (measured 2-3 s instead of 5-6 s
# on 2 cores); peak throughput is lower, so benchmarks pass fast_startup=False.
_C1_ONLY = "-XX:TieredStopAtLevel=1"

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Maven 3.8 colours some lines even with -B

T = TypeVar("T")


class KafkaHarnessError(CardpayError, RuntimeError):
    """The local Kafka broker could not be fetched, formatted, started or used."""


# --- jars ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$CARDPAY_CACHE_DIR/kafka-<version>`, else `~/.cache/cardpay/kafka-<version>`."""
    root = os.environ.get("CARDPAY_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "cardpay"
    return base / f"kafka-{KAFKA_VERSION}"


def ensure_kafka_jars(cache_dir: Path | None = None, *, pom: Path | None = None) -> Path:
    """The directory holding every jar the broker needs, fetched with Maven on first use.

    Maven writes into a staging directory; the marker (the pom's SHA-256) is written only after it
    succeeds, and the directory is then renamed into place, so an interrupted download is retried
    and a changed pom refreshes the cache. A file lock keeps parallel test workers from racing.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    pom = pom if pom is not None else POM_PATH
    if not pom.is_file():
        raise KafkaHarnessError(
            f"Kafka pom not found at {pom} (it lives in the repository's tools/)"
        )
    fingerprint = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = cache / "libs"
    if _is_complete(libs, fingerprint):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaHarnessError("`mvn` (Apache Maven) is not on PATH; it is needed to fetch Kafka")
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / ".lock"):
        if _is_complete(libs, fingerprint):
            return libs
        staging = cache / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        _run_maven(mvn, pom, staging, cwd=cache)
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaHarnessError(f"Maven succeeded but no kafka_2.13 jar is in {staging}")
        (staging / _COMPLETE_MARKER).write_text(fingerprint)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    return libs


def find_java() -> str:
    """The `java` executable: `$JAVA_HOME/bin/java`, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise KafkaHarnessError("`java` (17 or newer) is not on PATH and JAVA_HOME is not set")
    return java


def _is_complete(libs: Path, fingerprint: str) -> bool:
    marker = libs / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == fingerprint


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_maven(mvn: str, pom: Path, output_dir: Path, *, cwd: Path) -> None:
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
    ]
    _run_tool(command, cwd, _MAVEN_TIMEOUT, f"Maven fetching Kafka {KAFKA_VERSION} with {pom}")


def _run_tool(command: list[str], cwd: Path, timeout: float, what: str) -> None:
    """Run a setup tool to completion; its output tail goes into the error when it fails."""
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        raise KafkaHarnessError(f"{what}: no result after {timeout:.0f}s:\n{_tail(output)}") from exc
    if result.returncode != 0:
        raise KafkaHarnessError(
            f"{what} failed (exit {result.returncode}):\n"
            f"{_tail(_ANSI_ESCAPE.sub('', result.stdout))}"
        )


# --- the broker ---------------------------------------------------------------------------------


class KafkaBroker(ManagedService):
    """One Kafka process in KRaft combined mode, bound to 127.0.0.1.

    `start()` fetches the jars if needed, formats the storage (keeping an already formatted data
    dir) and waits until the broker answers a metadata request. `stop()` shuts it down gracefully
    (SIGTERM, then SIGKILL after a timeout) and removes the temporary directory. `kill()` sends
    SIGKILL and keeps the data and ports, so a later `start()` brings the same broker back at the
    same address (for fault tests).

    `data_dir` (kept, never deleted) holds server.properties, broker.log and data/; a broker
    started again on it keeps its topics. `fast_startup` runs the JVM with the client JIT only:
    ready in about half the time, lower peak throughput (benchmarks pass False). `config`
    entries override the generated server.properties.
    """

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        fast_startup: bool = True,
        startup_timeout: float = 90.0,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self._cache_dir = cache_dir
        self._given_data_dir = data_dir
        self._requested_ports = (port, controller_port)
        self._heap = heap
        self._fast_startup = fast_startup
        self._startup_timeout = startup_timeout
        self._extra_config = dict(config or {})
        self._cluster_id = _random_cluster_id()
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._port: int | None = None
        self._controller_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None


    # what callers use

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise KafkaHarnessError("the broker has not been started")
        return self._port

    @property
    def controller_port(self) -> int:
        if self._controller_port is None:
            raise KafkaHarnessError("the broker has not been started")
        return self._controller_port

    @property
    def workdir(self) -> Path:
        """Holds server.properties, broker.log and data/ (the Kafka log dir)."""
        if self._workdir is None:
            raise KafkaHarnessError("the broker has not been started")
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            raise KafkaHarnessError(f"the broker is already running at {self.bootstrap_servers}")
        libs = ensure_kafka_jars(self._cache_dir)
        java = find_java()
        restarting = self._workdir is not None
        try:
            self._start_process(java, libs, retry_ports=not restarting)
        except BaseException:  # also Ctrl-C while waiting: never leave a broker behind
            self._terminate(_STOP_TIMEOUT)
            if not restarting:
                self._discard_workdir()
            raise

    def _start_process(self, java: str, libs: Path, *, retry_ports: bool) -> None:
        workdir = self._prepare_workdir()
        retry_ports = retry_ports and self._requested_ports == (None, None)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._choose_ports()
            properties = self._write_properties(workdir)
            self._format_storage(java, libs, properties)
            self._launch(java, libs, properties)
            try:
                self._wait_until_ready()
                return
            except KafkaHarnessError:
                if not (retry_ports and attempt < _PORT_ATTEMPTS and _port_clash(self.log_tail())):
                    raise
                # Another process took a port between our probe and the broker's bind: new ports.
                self._terminate(_STOP_TIMEOUT)
                self._port = self._controller_port = None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Graceful shutdown; kills after `timeout` seconds. Removes the temporary directory."""
        self._terminate(timeout)
        self._discard_workdir()

    def kill(self) -> None:
        """SIGKILL, as a crash would. Data and ports are kept: `start()` restarts the same broker."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._release_process()

    def create_topic(self, name: str, partitions: int = 3, *, timeout: float = 30.0) -> None:
        """Create a topic (replication factor 1) and wait until every partition has a leader."""
        _run_sync(lambda: create_topic(self.bootstrap_servers, name, partitions, timeout=timeout))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self._workdir is None or not self.log_path.is_file():
            return "(no broker log)"
        with self.log_path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 256 * 1024))
            return _tail(handle.read().decode(errors="replace"), lines)

    # steps

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            if self._given_data_dir is not None:
                self._workdir = self._given_data_dir.resolve()
                self._workdir.mkdir(parents=True, exist_ok=True)
                self._owns_workdir = False
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="cardpay-kafka-"))
                self._owns_workdir = True
        return self._workdir

    def _choose_ports(self) -> None:
        if self._port is not None and self._controller_port is not None:
            return
        wanted_port, wanted_controller = self._requested_ports
        free = iter(_free_ports(2))
        self._port = wanted_port if wanted_port is not None else next(free)
        self._controller_port = wanted_controller if wanted_controller is not None else next(free)

    def _write_properties(self, workdir: Path) -> Path:
        settings = {
            **_server_settings(self.port, self.controller_port, workdir / "data"),
            **self._extra_config,
        }
        path = workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return path

    def _format_storage(self, java: str, libs: Path, properties: Path) -> None:
        if (properties.parent / "data" / "meta.properties").is_file():
            return  # formatted by an earlier start; Kafka checks it when it starts
        # Static quorum (controller.quorum.voters), so no --standalone: the voter's address lives
        # in the config, not in the metadata log, and a restart on other ports keeps working.
        command = [
            java,
            "-Xmx256m",
            _C1_ONLY,
            *_logging_options(),
            "-cp",
            _classpath(libs),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self._cluster_id,
            "--config",
            str(properties),
        ]
        _run_tool(command, properties.parent, _FORMAT_TIMEOUT, "Kafka storage format")

    def _launch(self, java: str, libs: Path, properties: Path) -> None:
        command = [
            java,
            f"-Xmx{self._heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *([_C1_ONLY] if self._fast_startup else []),
            *_logging_options(),
            "-cp",
            _classpath(libs),
            "kafka.Kafka",
            str(properties),
        ]
        self._log_handle = (properties.parent / "broker.log").open("ab")
        self._process = subprocess.Popen(
            command,
            cwd=properties.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the broker cleanly
            preexec_fn=parent_death_signal(signal.SIGKILL),
        )
        _track(self)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise KafkaHarnessError(
                    f"Kafka exited with code {code} during startup; log tail:\n{self.log_tail()}"
                )
            if _accepts_connections(self.port) and _run_sync(
                lambda: _answers_metadata(self.bootstrap_servers)
            ):
                return
            if time.monotonic() > deadline:
                raise KafkaHarnessError(
                    f"Kafka was not ready within {self._startup_timeout:.0f}s; log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._release_process()

    def _release_process(self) -> None:
        self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _discard_workdir(self) -> None:
        if self._workdir is not None and self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._owns_workdir = False
        self._port = self._controller_port = None


def _server_settings(port: int, controller_port: int, log_dir: Path) -> dict[str, str]:
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "3",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After kill() the controller keeps the dead incarnation's registration until its session
        # expires (default 9 s) and rejects the restarted broker until then; 3 s is still six
        # missed heartbeats, so a GC pause on a busy machine does not fence the broker.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
    }


def _logging_options() -> list[str]:
    # slf4j-simple (see tools/kafka/pom.xml) writes to stderr, which goes to broker.log.
    return [
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
        "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config.AbstractConfig=warn",
    ]


def _classpath(libs: Path) -> str:
    return str(libs / "*")


def _random_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes, without padding. One that
    # starts with "-" would be read as an option by the storage tool's argument parser.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_clash(log_tail: str) -> bool:
    return "Address already in use" in log_tail


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


async def _answers_metadata(bootstrap_servers: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()


async def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 3,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create `name` if it does not exist, then wait until every partition has a leader."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, replication_factor)])
        for topic_error in response.topic_errors:
            code, detail = topic_error[1], topic_error[2] if len(topic_error) > 2 else None
            error_type = for_code(code)
            if code != 0 and error_type is not TopicAlreadyExistsError:
                raise KafkaHarnessError(
                    f"creating topic {name!r} failed: {error_type.__name__} ({detail or 'no detail'})"
                )
        await _wait_for_leaders(admin, name, timeout)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        # All topics (None): asking for one by name would auto-create it on a permissive broker.
        topics = await admin.describe_topics(None)
        for topic in topics:
            if topic["topic"] == name and topic["error_code"] == 0:
                leaders = [p["leader"] for p in topic["partitions"]]
                if leaders and all(leader >= 0 for leader in leaders):
                    return
        if time.monotonic() > deadline:
            raise KafkaHarnessError(f"topic {name!r} has no leader for every partition")
        await asyncio.sleep(0.1)


# --- process hygiene ----------------------------------------------------------------------------

_live_brokers: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()
_atexit_registered = False


def _track(broker: KafkaBroker) -> None:
    global _atexit_registered
    _live_brokers.add(broker)
    if not _atexit_registered:
        atexit.register(_stop_live_brokers)
        _atexit_registered = True


def _stop_live_brokers() -> None:
    for broker in list(_live_brokers):
        with contextlib.suppress(Exception):
            broker.stop(timeout=10.0)


# --- helpers ------------------------------------------------------------------------------------


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when called inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cardpay.devstack.kafka_broker",
        description=f"Run a local single-node Apache Kafka {KAFKA_VERSION} broker until Ctrl-C.",
    )
    parser.add_argument("--cache-dir", type=Path, help="where the Kafka jars are cached")
    parser.add_argument("--data-dir", type=Path, help="keep the broker's data here (kept on exit)")
    parser.add_argument("--port", type=int, help="broker port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    broker = KafkaBroker(cache_dir=args.cache_dir, data_dir=args.data_dir, port=args.port)
    started = time.monotonic()
    try:
        with broker:
            print(
                f"Kafka {KAFKA_VERSION} ready in {time.monotonic() - started:.1f}s at "
                f"{broker.bootstrap_servers}\nlog: {broker.log_path}\nCtrl-C to stop.",
                flush=True,
            )
            while broker.running:
                time.sleep(0.5)
            print(f"Kafka exited unexpectedly; log tail:\n{broker.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0
    except KafkaHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

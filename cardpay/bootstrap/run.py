"""`cardpay run`: the whole stack on one machine, each long-running command its own process.

What the parent does, in order:
1. check that the ports it will hand out are free (one line naming the port otherwise);
2. the node: CARDPAY_RPC_URL when set (probed first: a bad URL is one line), else an Anvil of
   its own whose state lives in the data dir (`anvil-state.json`: the chain comes back on the
   next run, so the listener's stored chain identity and cursor stay valid);
3. the database: CARDPAY_DATABASE_URL, or the embedded PostgreSQL in CARDPAY_DATA_DIR, held by
   the parent (the children get its URL), migrated once here;
4. the local replicas: the `local` preset file in the data dir if its contracts are on this
   node, else deployed afresh (as `cardpay deploy`), with one card per cardholder Safe;
5. the dev defaults for what the demo also provides and a developer has no value for: the
   relayer's and the settlement account's keys (Anvil's well-known dev accounts 1 and 0), a
   webhook secret (generated once, kept in the data dir), and an endpoint that records the
   network's reversal advices. A setting given in the environment is used instead;
6. the children, through `cardpay.runtime.processes.Supervisor`: `cardpay listen`,
   `cardpay sagas run` (with the spend relayer and the refund sender), `cardpay project`,
   `cardpay api`, and `cardpay relay` with CARDPAY_KAFKA_BOOTSTRAP (the feeds then read Kafka;
   the PostgreSQL event log otherwise). Once the API answers /healthz and every metrics
   endpoint answers, one readiness line names the URLs.
Fork mode (`--fork-url URL [--fork-block N]`, docs/adr/0019): step 2 starts an Anvil fork of URL
(a Gnosis Chain node, chain 100) instead, step 4 deploys nothing — the `gnosis` preset names the
contracts — and registers the cards of `--cards-from FILE` (a deployment description, as the
stand-in's `--out` writes) if given; step 5 has spends and refunds sent as the accounts the
contracts expect, impersonated on the fork (CARDPAY_TX_SIGNER=impersonate), and the listener
matches refunds from the fork's first own block (`--match-refunds-from`), indexing from
`--from-block` (default: the first block after the
fork's).
On SIGINT/SIGTERM the children get SIGTERM, then SIGKILL after the grace period; then the
advice recorder, the database and Anvil stop, in the reverse order of their start.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from cardpay.errors import CardpayError
from cardpay.runtime.processes import ChildSpec, RestartPolicy, Supervisor, os_spawner
from cardpay.settings import Settings

if TYPE_CHECKING:  # web3, Anvil and SQLAlchemy load only when the stack starts
    from sqlalchemy import Engine

    from cardpay.devstack.anvil import AnvilNode
    from cardpay.devstack.local_chain import LocalChain

DEFAULT_METRICS_PORT = 9464
"""The listener's metrics port; then the projector's, the relay's and the saga worker's (as in
docker/compose.yaml: 9464-9467)."""
DEPLOYMENT_FILE = "local-deployment.json"
ANVIL_STATE = "anvil-state.json"
WEBHOOK_SECRET_FILE = "dev-webhook-secret"
BLOCK_TIME = 1
"""Seconds between the embedded Anvil's blocks once deployed: every spend and refund reaches
the listener's depth without waiting for later transactions."""
READY_TIMEOUT = 120.0


class RunRefused(CardpayError):
    """The stack cannot start; the message is one line for the user."""


# -- ports -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    api: int
    listener: int
    projector: int
    relay: int | None
    sagas: int


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_free(host: str, port: int, what: str) -> None:
    """Refuse a port something already listens on (the child would crash-loop on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RunRefused(f"port {port} on {host} ({what}) is already in use; stop what "
                                 "uses it or choose another") from None
            raise RunRefused(f"cannot listen on {host}:{port} ({what}): "
                             f"{exc.strerror or exc}") from None


def choose_ports(settings: Settings, *, api_port: int | None, metrics_port: int | None,
                 kafka: bool) -> Ports:
    """The API's port (0: a free one) and the metrics ports: `metrics_port` for the listener,
    the next for the projector, then the relay's and the saga worker's (0: free ones); all
    checked."""
    host = settings.api_host
    api = settings.api_port if api_port is None else api_port
    api = api or free_port(host)
    check_free(host, api, "the API's: --port or CARDPAY_API_PORT")
    base = DEFAULT_METRICS_PORT if metrics_port is None else metrics_port
    offsets = {"listener": 0, "projector": 1, "relay": 2, "saga worker": 3}
    if not kafka:
        del offsets["relay"]
    chosen: dict[str, int] = {}
    for name, offset in offsets.items():
        port = base + offset if base else free_port("127.0.0.1")
        check_free("127.0.0.1", port, f"the {name}'s metrics: --metrics-port")
        chosen[name] = port
    return Ports(api, chosen["listener"], chosen["projector"], chosen.get("relay"),
                 chosen["saga worker"])


# -- the node, the database, the replicas, the dev defaults ------------------------------------
@dataclass(frozen=True)
class Fork:
    """Fork mode: an Anvil fork of `url` (at `block`, or its head) with the `gnosis` preset."""

    url: str
    block: int | None = None
    from_block: int | None = None
    """The listener's first block (default: the first after the fork's)."""
    cards_from: Path | None = None
    """A deployment description whose cardholder Safes get a card each."""


@dataclass
class Stack:
    """What the children run against, and what the parent says about it at start."""

    rpc_url: str
    preset: tuple[str, ...]
    """The children's chain options (`--preset ...`)."""
    from_block: int
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    secret_file: Path | None = None
    listen_options: tuple[str, ...] = ()


def _probe_node(url: str, shown: str | None = None) -> tuple[int, str]:
    from cardpay.bootstrap.listen import NodeUnreachable, node_identity
    from listener.rpc import HttpJsonRpc

    probe = HttpJsonRpc(url, retries=1, timeout=5.0)
    try:
        return node_identity(probe, shown or url)
    except NodeUnreachable as exc:
        raise RunRefused(str(exc)) from None
    except Exception as exc:  # a URL the HTTP client cannot even use
        raise RunRefused(f"cannot reach the node at {shown or url}: {type(exc).__name__}; "
                         "check CARDPAY_RPC_URL or --fork-url") from None
    finally:
        probe.close()


def _host(url: str) -> str:
    """A node URL as it may be printed: scheme and host only (a provider's URL often carries
    an API key in its path or query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@contextlib.contextmanager
def _fork_node(settings: Settings, fork: Fork,
               notes: list[str]) -> Iterator[tuple[str, AnvilNode | None]]:
    from cardpay.devstack.anvil import AnvilHarnessError
    from cardpay.devstack.gnosis_standin import fork_of

    node = fork_of(fork.url, fork.block, log_path=settings.data_dir / "anvil-fork.log")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        node.start()
    except (AnvilHarnessError, OSError) as exc:
        raise RunRefused(f"the Anvil fork of {_host(fork.url)} did not start: "
                         f"{str(exc).splitlines()[0]}") from None
    try:
        head = int(node.rpc("eth_blockNumber"), 16)
        notes.append(f"chain: an Anvil fork of {_host(fork.url)} at block {head} (chain 100), at "
                     f"{node.rpc_url}; its own blocks are gone when it stops")
        yield node.rpc_url, node
    finally:
        node.stop()


@contextlib.contextmanager
def _node(settings: Settings, notes: list[str],
          fork: Fork | None = None) -> Iterator[tuple[str, AnvilNode | None]]:
    """The node's URL, and the embedded Anvil (None with CARDPAY_RPC_URL)."""
    if fork is not None:
        with _fork_node(settings, fork, notes) as found:
            yield found
        return
    if settings.rpc_url:  # probed by `run` before anything started
        notes.append(f"chain: the node at {settings.rpc_url} (CARDPAY_RPC_URL)")
        yield settings.rpc_url, None
        return
    from cardpay.devstack.anvil import AnvilHarnessError, AnvilNode

    state = settings.data_dir / ANVIL_STATE
    node = AnvilNode(state_path=state, log_path=settings.data_dir / "anvil.log")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        node.start()
    except (AnvilHarnessError, OSError) as exc:
        raise RunRefused(f"Anvil did not start: {str(exc).splitlines()[0]}") from None
    try:
        notes.append(f"chain: Anvil at {node.rpc_url}, its state kept in {state} "
                     "(set CARDPAY_RPC_URL to use another node)")
        yield node.rpc_url, node
    finally:
        node.stop()


def _deployment(settings: Settings, engine: Engine, rpc_url: str, anvil: AnvilNode | None,
                cardholders: int, notes: list[str]) -> tuple[Path, int]:
    """The `local` preset file, deployed now unless its contracts are on this node."""
    from web3.types import RPCEndpoint

    from cardpay.bootstrap.cards import local_cards, register_cards
    from cardpay.devstack.local_chain import LocalChain, LocalChainError
    from listener.presets import local_config

    path = settings.data_dir / DEPLOYMENT_FILE
    chain = LocalChain(rpc_url)
    known = _known_deployment(path, chain)
    if known is not None:
        notes.append(f"replicas: deployed at block {known['deployed_at_block']} ({path})")
        return path, int(known["deployed_at_block"])
    try:
        deployment = chain.deploy(n_cardholders=cardholders).to_dict()
        if anvil is not None:  # bury the deployment below the listener's depth (see lifecycle)
            chain.w3.provider.make_request(RPCEndpoint("anvil_mine"),
                                           [hex(settings.confirmations + 1)])
    except (LocalChainError, ValueError) as exc:
        raise RunRefused(f"deploying the replicas on {rpc_url} failed: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deployment, indent=2) + "\n")
    symbol, cards = local_cards(deployment)
    register_cards(settings, engine, local_config(deployment), rpc_url, cards,
                   skip_existing=True)
    notes.append(f"replicas: deployed at block {deployment['deployed_at_block']} ({path}), "
                 f"{len(cards)} {symbol} cards registered (local-0000..)")
    return path, int(deployment["deployed_at_block"])


def _known_deployment(path: Path, chain: LocalChain) -> dict[str, Any] | None:
    """The preset file's deployment if its Spender module has code on this node."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        code = chain.w3.eth.get_code(chain.w3.to_checksum_address(data["spender_module"]))
        return data if int(data["chain_id"]) == int(chain.w3.eth.chain_id) and code else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _webhook_secret(settings: Settings) -> Path:
    """A dev webhook secret, made once per data dir (readable by its owner only)."""
    path = settings.data_dir / WEBHOOK_SECRET_FILE
    if not path.is_file():
        value = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
    return path


def _fork_cards(settings: Settings, engine: Engine, rpc_url: str, anvil: AnvilNode,
                fork: Fork, notes: list[str]) -> tuple[int, int]:
    """Bury the fork's first block below the listener's depth, register the cards of
    `--cards-from`; the listener's first block and the fork's first own block."""
    from cardpay.bootstrap.cards import register_cards
    from cardpay.bootstrap.lifecycle import deployment_cards, fork_config
    from cardpay.devstack.local_chain import LocalDeployment

    start = int(anvil.rpc("eth_blockNumber"), 16) + 1
    anvil.rpc("anvil_mine", [hex(settings.confirmations + 1)])
    if fork.cards_from is not None:
        try:
            deployment = LocalDeployment.from_dict(json.loads(fork.cards_from.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunRefused(f"--cards-from {fork.cards_from}: not a deployment description "
                             f"({type(exc).__name__}: {exc})") from None
        cards = deployment_cards(deployment, fork_config())
        register_cards(settings, engine, fork_config(), rpc_url, cards, skip_existing=True)
        notes.append(f"cards: {len(cards)} registered from {fork.cards_from} "
                     f"({cards[0].card_id if cards else '-'}..)")
    else:
        notes.append("cards: none registered (--cards-from FILE, or `cardpay cards add "
                     "--preset gnosis`)")
    first = start if fork.from_block is None else fork.from_block
    notes.append(f"listener: from block {first} (--from-block); blocks up to the fork's are "
                 f"served by {_host(fork.url)}, its refunds observed, not matched")
    return first, start


@contextlib.contextmanager
def prepared(settings: Settings, *, cardholders: int, fork: Fork | None = None) -> Iterator[Stack]:
    """Node, database, replicas (or, forking, cards) and dev defaults, held until the `with`
    ends."""
    from cardpay.bootstrap import database

    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        rpc_url, anvil = stack.enter_context(_node(settings, notes, fork))
        engine = stack.enter_context(database(settings))
        notes.append("database: " + (
            "CARDPAY_DATABASE_URL" if settings.database_url else
            f"embedded PostgreSQL in {settings.data_dir / 'pgdata'} "
            "(set CARDPAY_DATABASE_URL to use another server)"))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CARDPAY_RPC_URL": rpc_url,
               "CARDPAY_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
        listen_options: tuple[str, ...] = ()
        if fork is not None:
            assert anvil is not None
            from_block, fork_first = _fork_cards(settings, engine, rpc_url, anvil, fork, notes)
            preset: tuple[str, ...] = ("--preset", "gnosis")
            listen_options = ("--match-refunds-from", str(fork_first))
            _impersonate(settings, env, notes, rpc_url)
        else:
            path, from_block = _deployment(settings, engine, rpc_url, anvil, cardholders, notes)
            preset = ("--preset", "local", "--deployment", str(path))
        if anvil is not None:
            anvil.rpc("evm_setIntervalMining", [BLOCK_TIME])
        secret_file = None
        if fork is None and (settings.relayer_key is None or settings.settlement_key is None):
            from cardpay.bootstrap.lifecycle import dev_key

            if settings.relayer_key is None:
                env["CARDPAY_RELAYER_KEY"] = dev_key(1).reveal()
            if settings.settlement_key is None:
                env["CARDPAY_SETTLEMENT_KEY"] = dev_key(0).reveal()
            notes.append("dev default: spends are signed with Anvil's dev account 1, refunds "
                         "with dev account 0 (set CARDPAY_RELAYER_KEY / CARDPAY_SETTLEMENT_KEY)")
        if settings.webhook_secrets:
            secret = settings.webhook_secrets[0]
        else:
            secret_file = _webhook_secret(settings)
            secret = secret_file.read_text().strip()
            env["CARDPAY_WEBHOOK_SECRETS"] = secret
            notes.append(f"dev default: the card network's webhook secret is in {secret_file} "
                         "(set CARDPAY_WEBHOOK_SECRETS)")
        if not settings.network_advice_url:
            from cardpay.devstack.network_advices import AdviceRecorder

            recorder = stack.enter_context(AdviceRecorder(secret))
            # the base URL: the advice sender adds the path itself (outbound.network.ADVICE_PATH)
            env["CARDPAY_NETWORK_ADVICE_URL"] = recorder.url
            notes.append(f"dev default: reversal advices go to a recorder at {recorder.url} "
                         "(set CARDPAY_NETWORK_ADVICE_URL)")
        notes.append("event feed: " + (f"Kafka at {settings.kafka_bootstrap}, published by "
                                       "`cardpay relay`" if settings.kafka_bootstrap else
                                       "the PostgreSQL event log (set CARDPAY_KAFKA_BOOTSTRAP "
                                       "for Kafka)"))
        engine.dispose()  # the parent keeps the server, not connections
        yield Stack(rpc_url, preset, from_block, env, notes, secret_file, listen_options)


def _impersonate(settings: Settings, env: dict[str, str], notes: list[str],
                 rpc_url: str) -> None:
    """On a fork nobody here holds Gnosis Pay's keys: spends and refunds are sent as the
    accounts the contracts expect, impersonated (unless CARDPAY_TX_SIGNER says `key`). Spends:
    CARDPAY_RELAYER_ADDRESS, else the Spender module's first enabled module, read from the
    fork here for the note (the spend relayer reads it again when it starts)."""
    if os.environ.get("CARDPAY_TX_SIGNER"):
        notes.append(f"transactions: CARDPAY_TX_SIGNER={settings.tx_signer}")
        return
    env["CARDPAY_TX_SIGNER"] = "impersonate"
    if settings.relayer_address:
        relayer = f"{settings.relayer_address} (CARDPAY_RELAYER_ADDRESS)"
    else:
        from cardpay.bootstrap.relayer import (
            RelayerNotConfigured,
            chain_targets,
            first_enabled_module,
        )
        from cardpay.onchain.sender import RpcNode
        from listener.presets import GNOSIS
        from listener.rpc import HttpJsonRpc

        module = chain_targets(GNOSIS).spender_module
        try:
            found = first_enabled_module(RpcNode(HttpJsonRpc(rpc_url, retries=1)), module)
            relayer = f"{found}, the Spender module's first enabled module"
        except RelayerNotConfigured as exc:
            relayer = f"nobody ({exc})"
    notes.append(f"transactions: spends sent as {relayer}, refunds as the settlement Safe's "
                 "first owner (CARDPAY_SETTLEMENT_SENDER; the fork's threshold set to 1), "
                 "impersonated on the fork (CARDPAY_TX_SIGNER=impersonate)")


# -- the children ------------------------------------------------------------------------------
def child_specs(settings: Settings, stack: Stack, ports: Ports, *,
                flags: tuple[str, ...] = ()) -> list[ChildSpec]:
    """The real `cardpay` commands (`python -m cardpay`), one process each. `flags` go before
    the command (`--debug`, `-v`)."""
    cardpay = (sys.executable, "-m", "cardpay", *flags)
    preset = stack.preset
    specs = [
        ChildSpec("listen", (*cardpay, "listen", *preset, *stack.listen_options,
                             "--from-block", str(stack.from_block),
                             "--metrics-port", str(ports.listener), "--poll-interval", "1"),
                  stack.env),
        ChildSpec("sagas", (*cardpay, "sagas", "run", *preset, "--metrics-port",
                            str(ports.sagas)), stack.env),
        ChildSpec("project", (*cardpay, "project", "--metrics-port", str(ports.projector)),
                  stack.env),
        ChildSpec("api", (*cardpay, "api", "--port", str(ports.api)), stack.env),
    ]
    if ports.relay is not None:
        specs.append(ChildSpec("relay", (*cardpay, "relay", "--metrics-port", str(ports.relay)),
                               stack.env))
    return specs


def _url_host(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"[{host}]" if ":" in host else host


def probes(settings: Settings, ports: Ports) -> dict[str, str]:
    """What must answer 200 before the stack is ready, by what it is."""
    api = f"http://{_url_host(settings.api_host)}:{ports.api}"
    out = {"API": f"{api}/healthz", "listener metrics": f"http://127.0.0.1:{ports.listener}/metrics",
           "projector metrics": f"http://127.0.0.1:{ports.projector}/metrics",
           "saga worker metrics": f"http://127.0.0.1:{ports.sagas}/metrics"}
    if ports.relay is not None:
        out["relay metrics"] = f"http://127.0.0.1:{ports.relay}/metrics"
    return out


def ready_line(settings: Settings, ports: Ports) -> str:
    api = f"http://{_url_host(settings.api_host)}:{ports.api}"
    metrics = [f"{api}/metrics", f"http://127.0.0.1:{ports.listener}/metrics",
               f"http://127.0.0.1:{ports.projector}/metrics",
               f"http://127.0.0.1:{ports.sagas}/metrics"]
    if ports.relay is not None:
        metrics.append(f"http://127.0.0.1:{ports.relay}/metrics")
    return (f"cardpay run: ready: API {api} (network ingress {api}/v1/network/...), "
            f"finance page {api}/finance/login, metrics {' '.join(metrics)}; "
            "Ctrl-C stops everything")


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# -- signals and the supervision loop -----------------------------------------------------------
class StopSignals:
    """SIGINT and SIGTERM set `event`. Until `supervising()`, they also raise KeyboardInterrupt,
    so a stop during the start unwinds what was started (Anvil, the database)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._raise = True
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()
        if self._raise:
            self._raise = False
            raise KeyboardInterrupt

    def supervising(self) -> None:
        self._raise = False

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass(frozen=True)
class RunOptions:
    api_port: int | None = None
    metrics_port: int | None = None
    cardholders: int = 5
    grace: float = 10.0
    flags: tuple[str, ...] = ()
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    ready_timeout: float = READY_TIMEOUT
    fork: Fork | None = None


def run(settings: Settings, options: RunOptions, *, out: IO[str] = sys.stdout,
        err: IO[str] = sys.stderr) -> int:
    """The whole stack until SIGINT/SIGTERM (exit status 0), or until a child restarts too
    often or the stack is not ready in time (1). Raises `RunRefused` before anything runs."""
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            err.write(f"cardpay run: {message}\n")
            err.flush()

    with StopSignals() as signals:
        ports = choose_ports(settings, api_port=options.api_port,
                             metrics_port=options.metrics_port,
                             kafka=bool(settings.kafka_bootstrap))
        if options.fork is not None:
            _check_upstream(settings, options.fork)
        elif settings.rpc_url:
            _probe_node(settings.rpc_url)
        say("starting the node and the database, deploying the replicas if needed")
        with prepared(settings, cardholders=options.cardholders, fork=options.fork) as stack:
            for note in stack.notes:
                say(note)
            supervisor = Supervisor(child_specs(settings, stack, ports, flags=options.flags),
                                    spawn=os_spawner(err, lock), say=say, policy=options.policy)
            signals.supervising()
            try:
                if signals.event.is_set():
                    return 0
                supervisor.start_all()
                status = supervise(supervisor, signals.event, probes(settings, ports),
                                   lambda: _ready(out, settings, ports, lock),
                                   timeout=options.ready_timeout, say=say)
            finally:
                say("stopping")
                supervisor.stop(options.grace)
            say("stopping the database and the node")
    say("stopped")
    return status


def _check_upstream(settings: Settings, fork: Fork) -> None:
    """The chain to fork answers and is Gnosis Chain (the `gnosis` preset's chain id)."""
    from listener.presets import GNOSIS

    if settings.rpc_url:
        raise RunRefused("--fork-url starts a fork of its own: unset CARDPAY_RPC_URL")
    chain_id, _ = _probe_node(fork.url, _host(fork.url))
    if chain_id != GNOSIS.chain_id:
        raise RunRefused(f"the node at {_host(fork.url)} is chain {chain_id}; fork mode runs "
                         f"the gnosis preset, chain {GNOSIS.chain_id} (Gnosis Chain)")
    if fork.cards_from is not None and not fork.cards_from.is_file():
        raise RunRefused(f"--cards-from {fork.cards_from}: no such file")


def _ready(out: IO[str], settings: Settings, ports: Ports, lock: threading.Lock) -> None:
    with lock:
        out.write(ready_line(settings, ports) + "\n")
        out.flush()


def supervise(supervisor: Supervisor, stop: threading.Event, checks: dict[str, str],
              announce: Callable[[], None], *, timeout: float, say: Callable[[str], None],
              answers: Callable[[str], bool] = _answers, interval: float = 0.2) -> int:
    """Step the supervisor until `stop`; announce readiness once every check answers and
    every child runs (status 1 when it is not so within `timeout`, or a child failed)."""
    pending = dict(checks)
    announced = False
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        supervisor.step()
        if supervisor.failed is not None:
            return 1
        if not announced:
            for what, url in list(pending.items()):
                if answers(url):
                    del pending[what]
            if not pending and supervisor.all_running():
                announce()
                announced = True
            elif time.monotonic() > deadline:
                waiting = [f"{what} ({url}) does not answer" for what, url in pending.items()]
                say(f"not ready within {timeout:.0f}s: "
                    f"{'; '.join(waiting) or 'a process is restarting'}; see the output above")
                return 1
        stop.wait(interval)
    return 0

"""docker/: the compose file, the Prometheus scrape config, Grafana's provisioning and the
Dockerfile, checked without a container engine (none runs here: nothing is built or started).

`docker-compose config` (Debian's docker-compose, installed by scripts/setup.sh) validates and
resolves the compose file; the checks after it tie the files to the code, so that a renamed
command, option or setting, a moved metrics port or a scrape target with no service fails here:
- every cardpay service's command parses with the CLI's own parser and its environment is read
  by `Settings.from_env` without an error, and names only variables cardpay reads;
- every Prometheus target is a compose service and the port its process serves metrics on, on a
  non-loopback address, and every cardpay process that serves metrics is scraped;
- the Dockerfile has its builder and runtime stages, runs as a non-root user and copies only
  paths that exist and that .dockerignore lets through.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import ipaddress
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cardpay.cli.main import EPILOG, build_parser, command_name
from cardpay.settings import Settings
from listener.presets import GNOSIS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
CARDPAY_IMAGE = "cardpay:local"

REQUIRED = {
    "POSTGRES_PASSWORD": "test-password-0123",
    "GNOSIS_RPC_URL": "https://gnosis-rpc.example.invalid",
    "LISTEN_FROM_BLOCK": "38000000",
    "CARDPAY_WEBHOOK_SECRETS": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    "GRAFANA_ADMIN_PASSWORD": "test-admin",
}
"""The variables the compose file refuses to run without (`${VAR:?...}`), with sample values."""

PROCESSES = {("db", "upgrade"), ("listen",), ("sagas", "run"), ("relay",), ("project",),
             ("api",)}
"""The cardpay processes the stack runs: each must be a service of the compose file."""


def _docker_compose(env: Mapping[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: run scripts/setup.sh (Debian package docker-compose)"
    empty = tmp_path / "empty.env"  # a developer's docker/.env must not fill in what is missing
    empty.write_text("")
    base = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(
        [binary, "--env-file", str(empty), "-f", str(COMPOSE), "config"],
        env={**base, **env}, capture_output=True, text=True, timeout=120, cwd=DOCKER)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = _docker_compose(REQUIRED, tmp_path_factory.mktemp("compose"))
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert isinstance(resolved, dict)
    return resolved


@dataclass(frozen=True)
class CardpayService:
    name: str
    command: list[str]
    args: argparse.Namespace
    env: dict[str, str]
    settings: Settings
    expose: set[int]

    @property
    def process(self) -> tuple[str, ...]:
        """`("sagas", "run")`: the command as the CLI names it, without its options."""
        return tuple(command_name(self.args).split()[1:])

    def metrics(self) -> tuple[str, int] | None:
        """(bind address, port) of this process's /metrics, None when it serves none."""
        if self.args.command == "api":
            return (self.args.host or self.settings.api_host,
                    self.args.port or self.settings.api_port)
        port = getattr(self.args, "metrics_port", None)
        return None if port is None else (self.settings.metrics_host, port)


def _parse(name: str, command: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:  # the CLI's parser refused it (unknown command or option)
        raise AssertionError(f"service {name}: `cardpay {shlex.join(command)}` is not a "
                             f"cardpay command (exit {exc.code})") from None


def _cardpay_services(config: dict[str, Any]) -> dict[str, CardpayService]:
    found = {}
    for name, service in config["services"].items():
        if service.get("image") != CARDPAY_IMAGE:
            continue
        command = [str(word) for word in service["command"]]
        env = {key: "" if value is None else str(value)
               for key, value in service.get("environment", {}).items()}
        found[name] = CardpayService(
            name=name, command=command, args=_parse(name, command), env=env,
            settings=Settings.from_env(env),
            expose={int(port) for port in service.get("expose", [])})
    return found


@pytest.fixture(scope="module")
def cardpay(config: dict[str, Any]) -> dict[str, CardpayService]:
    return _cardpay_services(config)


# --- the compose file -------------------------------------------------------------------------


def test_compose_config_passes_and_names_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) >= {"postgres", "kafka", "kafka-init", "anvil", "db-migrate",
                                      "listen", "sagas", "relay", "project", "api",
                                      "prometheus", "grafana"}


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_required_variable_is_refused_when_missing(missing: str, tmp_path: Path) -> None:
    env = {key: value for key, value in REQUIRED.items() if key != missing}
    proc = _docker_compose(env, tmp_path)
    assert proc.returncode != 0
    assert f"set {missing}" in proc.stderr, proc.stderr


def test_every_cardpay_process_runs_once_with_a_real_command(
        cardpay: dict[str, CardpayService]) -> None:
    processes = sorted(service.process for service in cardpay.values())
    assert sorted(PROCESSES) == processes
    for service in cardpay.values():
        assert callable(getattr(service.args, "run", None)), \
            f"{service.name}: `cardpay {shlex.join(service.command)}` is a group, not a command"


def test_every_cardpay_variable_is_one_cardpay_reads(cardpay: dict[str, CardpayService]) -> None:
    source = (ROOT / "cardpay" / "settings.py").read_text()
    read = set(re.findall(r'"(CARDPAY_[A-Z0-9_]+)"', source))
    documented = set(re.findall(r"\b(CARDPAY_[A-Z0-9_]+)\b", EPILOG))
    raw = COMPOSE.read_text()
    used = set(re.findall(r"\b(CARDPAY_[A-Z0-9_]+)\b", raw))
    assert used, "the compose file sets no CARDPAY_ variable"
    assert used <= read, f"not read by cardpay/settings.py: {sorted(used - read)}"
    assert used <= documented, f"not in `cardpay --help`: {sorted(used - documented)}"
    for service in cardpay.values():  # Settings.from_env above accepted every value
        assert service.settings.database_url is not None, f"{service.name}: embedded database"
        assert service.settings.kafka_bootstrap == "kafka:9092", service.name


def test_the_processes_reach_the_stack_by_service_name(
        config: dict[str, Any], cardpay: dict[str, CardpayService]) -> None:
    services = config["services"]
    postgres = services["postgres"]["environment"]
    database = (f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                f"@postgres:5432/{postgres['POSTGRES_DB']}")
    assert postgres["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    for service in cardpay.values():
        assert service.settings.database_url == database, service.name
        assert service.settings.rpc_url == "http://anvil:8545", service.name
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert {int(p) for p in services["anvil"]["expose"]} == {8545}
    topic = services["kafka-init"]["command"]
    assert topic[topic.index("--topic") + 1] == cardpay["relay"].settings.kafka_topic


def test_the_anvil_fork_is_the_chain_of_the_gnosis_preset(
        config: dict[str, Any], cardpay: dict[str, CardpayService]) -> None:
    anvil = config["services"]["anvil"]
    command = [str(word) for word in anvil["command"]]
    assert anvil["entrypoint"] == ["anvil"]
    assert command[command.index("--fork-url") + 1] == REQUIRED["GNOSIS_RPC_URL"]
    assert int(command[command.index("--chain-id") + 1]) == GNOSIS.chain_id
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = int(command[command.index("--port") + 1])
    assert cardpay["listen"].settings.rpc_url == f"http://anvil:{port}"
    for name in ("listen", "sagas"):
        assert cardpay[name].args.preset == "gnosis", name
    assert cardpay["listen"].args.from_block == int(REQUIRED["LISTEN_FROM_BLOCK"])


def test_the_api_listens_beyond_loopback_with_the_networks_secret(
        config: dict[str, Any], cardpay: dict[str, CardpayService]) -> None:
    api = cardpay["api"]
    assert api.settings.webhook_secrets == (REQUIRED["CARDPAY_WEBHOOK_SECRETS"],)
    host, port = api.metrics() or ("", 0)
    assert not ipaddress.ip_address(host).is_loopback
    published = [str(entry) for entry in config["services"]["api"]["ports"]]
    assert any(entry.split("/")[0].endswith(f":{port}") for entry in published), published
    assert "healthcheck" not in config["services"]["api"], "the image's HEALTHCHECK is meant"


def test_start_order_waits_for_what_each_service_needs(
        config: dict[str, Any], cardpay: dict[str, CardpayService]) -> None:
    services = config["services"]
    for name, service in services.items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, f"{name} depends on unknown {needed}"
            if condition["condition"] == "service_healthy":
                check = services[needed].get("healthcheck", {"test": ["image"]})
                assert check.get("test") != ["NONE"], f"{name} waits on {needed}'s health"
            if condition["condition"] == "service_completed_successfully":
                assert services[needed].get("restart") == "no", f"{needed} is a one-shot"
    for name, service in cardpay.items():
        waits = services[name].get("depends_on", {})
        if service.process == ("db", "upgrade"):
            assert waits["postgres"]["condition"] == "service_healthy"
            continue
        assert waits["db-migrate"]["condition"] == "service_completed_successfully", name
        if service.process in {("relay",), ("project",), ("sagas", "run")}:
            assert waits["kafka-init"]["condition"] == "service_completed_successfully", name
        if service.process in {("listen",), ("sagas", "run")}:
            assert waits["anvil"]["condition"] == "service_healthy", name


# --- Prometheus and Grafana ---------------------------------------------------------------------


def _scrape_targets() -> list[tuple[str, str, int]]:
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = []
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((job["job_name"], host, int(port)))
    return targets


def test_every_scrape_target_is_a_service_serving_metrics_on_that_port(
        config: dict[str, Any], cardpay: dict[str, CardpayService]) -> None:
    services = config["services"]
    targets = _scrape_targets()
    assert targets
    for job, host, port in targets:
        assert host in services, f"job {job}: no compose service {host!r}"
        expose = {int(p) for p in services[host].get("expose", [])}
        assert port in expose, f"job {job}: {host} exposes {sorted(expose)}, not {port}"
        if host in cardpay:
            served = cardpay[host].metrics()
            assert served is not None, f"job {job}: `{host}` serves no metrics"
            address, served_port = served
            assert served_port == port, f"job {job}: {host} serves metrics on {served_port}"
            assert not ipaddress.ip_address(address).is_loopback, \
                f"job {job}: {host} binds {address}, unreachable from Prometheus"


def test_every_cardpay_metrics_endpoint_is_scraped(cardpay: dict[str, CardpayService]) -> None:
    scraped = {(host, port) for _, host, port in _scrape_targets()}
    serving = {(name, served[1]) for name, service in cardpay.items()
               if (served := service.metrics()) is not None}
    assert {"api", "listen", "project", "relay"} <= {name for name, _ in serving}
    assert serving <= scraped, f"not scraped: {sorted(serving - scraped)}"


def _mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host directory → container path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = (volume.split(":")[:2] if isinstance(volume, str)
                          else (volume["source"], volume["target"]))
        if source.startswith("/"):
            found[Path(source).resolve()] = target
    return found


def test_promtool_accepts_the_scrape_config() -> None:
    """Syntax only: the rule file it names is written and tested with the alert rules
    (tests/integration/test_alert_rules.py)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (Debian package prometheus, installed by scripts/setup.sh)")
    proc = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(DOCKER / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_reads_this_config_and_its_alert_rules(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    mounted = _mounts(prometheus)[(DOCKER / "prometheus").resolve()]
    assert f"--config.file={mounted}/prometheus.yml" in prometheus["command"]
    rules = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert rules == ["alerts.yml"]  # docker/prometheus/alerts.yml, next to this config


def test_grafana_is_provisioned_with_the_prometheus_of_the_stack(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts[provisioning.resolve()] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    url = source["url"].removeprefix("http://")
    host, port = url.split(":")
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert host in config["services"]
    assert int(port) in {int(p) for p in config["services"][host].get("expose", [])}
    providers = yaml.safe_load((provisioning / "dashboards" / "cardpay.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mounts[(DOCKER / "grafana" / "dashboards").resolve()]
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]


# --- the Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    found = []
    for entry in logical:
        keyword, _, arguments = entry.partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return found


def _stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", instruction.arguments, re.IGNORECASE)
            assert match, f"every stage is named: FROM {instruction.arguments}"
            current = stages.setdefault(match.group(2), [])
        elif current is not None:
            current.append(instruction)
    return stages


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[Instruction]]:
    return _stages(_instructions((DOCKER / "Dockerfile").read_text()))


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [instruction.arguments for instruction in stage if instruction.keyword == keyword]


def test_the_dockerfile_builds_in_one_stage_and_runs_in_another(
        dockerfile: dict[str, list[Instruction]]) -> None:
    assert list(dockerfile) == ["builder", "runtime"]
    builder, runtime = dockerfile["builder"], dockerfile["runtime"]
    installs = [run for run in _args(builder, "RUN") if "pip install" in run]
    assert installs and all("-c constraints.txt" in run for run in installs)
    assert "COPY --from=builder /opt/cardpay /opt/cardpay" in [
        f"COPY {args}" for args in _args(runtime, "COPY")]
    runtime_runs = " ".join(_args(runtime, "RUN"))
    for tool in ("apt-get install", "build-essential", "gcc", "pip install"):
        assert tool not in runtime_runs, f"the runtime stage installs {tool}"
    assert any("PATH=/opt/cardpay/bin:" in env for env in _args(runtime, "ENV"))


def test_the_image_runs_cardpay_as_a_user_that_is_not_root(
        dockerfile: dict[str, list[Instruction]]) -> None:
    runtime = dockerfile["runtime"]
    users = _args(runtime, "USER")
    assert users, "the runtime stage never leaves root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    last_user = max(i for i, step in enumerate(runtime) if step.keyword == "USER")
    assert all(step.keyword != "RUN" for step in runtime[last_user:]), "RUN after USER"
    assert _args(runtime, "ENTRYPOINT") == ['["cardpay"]']
    (check,) = _args(runtime, "HEALTHCHECK")
    assert "/healthz" in check and "CARDPAY_API_PORT" in check


def _dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, pattern.removeprefix("**/")) for pattern in patterns)


def test_the_builder_copies_every_package_and_nothing_ignored(
        dockerfile: dict[str, list[Instruction]]) -> None:
    patterns = _dockerignore()
    assert {".venv", "node_modules", ".git"} <= set(patterns)
    copied = set()
    for args in _args(dockerfile["builder"], "COPY"):
        *sources, _ = args.split()
        for source in sources:
            name = source.rstrip("/")
            assert (ROOT / name).exists(), f"COPY {source}: no such path in the repository"
            assert not _ignored(name, patterns), f"COPY {source}: excluded by .dockerignore"
            copied.add(name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in
                project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"packages not copied: {sorted(packages - copied)}"
    assert {"pyproject.toml", "constraints.txt", project["project"]["readme"]} <= copied

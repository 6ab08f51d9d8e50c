"""Settings, read once from `CARDPAY_*` environment variables (the composition root passes them on)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cardpay.errors import CardpayError
from domain.settlement import parse_cutoff

DATABASE_URL_FORM = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
DATABASE_URL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class SettingsError(CardpayError, ValueError):
    """A setting that is missing or malformed."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(name: str, raw: str) -> timedelta:
    """`72h`, `3d`, `90m`, `3600s`: a positive whole number with its unit. A bare number is
    refused rather than guessed (72 seconds or 72 hours?)."""
    text = raw.strip().lower()
    unit = DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1]
    if unit is None or not number.isdigit() or int(number) <= 0:
        raise SettingsError(f"{name} must be a positive duration with a unit (s, m, h or d, "
                            f"e.g. 72h), got {raw!r}")
    return timedelta(seconds=int(number) * unit)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower() or default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a number of seconds, 0 or more, got {raw!r}")
    return value


def _database_url(env: Mapping[str, str]) -> str | None:
    """The URL as given, once it is known to be a PostgreSQL URL with a usable host and port:
    a typo is reported here, naming the variable, rather than deep inside the driver."""
    raw = (env.get("CARDPAY_DATABASE_URL") or "").strip()
    if not raw:
        return None
    expected = f"expected {DATABASE_URL_FORM}"
    if "://" not in raw:
        raise SettingsError(f"CARDPAY_DATABASE_URL is not a URL: {expected}")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise SettingsError(f"CARDPAY_DATABASE_URL is malformed ({exc}): {expected}") from None
    if parts.scheme not in DATABASE_URL_SCHEMES:
        raise SettingsError(f"CARDPAY_DATABASE_URL must start with postgresql://, not "
                            f"{parts.scheme}://: {expected}")
    if not parts.hostname and "host" not in parse_qs(parts.query):
        raise SettingsError(f"CARDPAY_DATABASE_URL names no host: {expected}")
    return raw


def _webhook_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """`whsec_<base64>` secrets, comma separated (several while the network rotates its key)."""
    name = "CARDPAY_WEBHOOK_SECRETS"
    secrets = tuple(part.strip() for part in (env.get(name) or "").split(",") if part.strip())
    for number, secret in enumerate(secrets, 1):
        if not secret.startswith("whsec_"):
            raise SettingsError(f"{name}: secret {number} must start with whsec_")
        raw = secret.removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except binascii.Error:
            key = b""
        if not key:
            raise SettingsError(f"{name}: secret {number} is not whsec_ followed by base64")
    return secrets


def _cutoff(env: Mapping[str, str]) -> time:
    try:
        return parse_cutoff((env.get("CARDPAY_SETTLEMENT_CUTOFF") or "02:00").strip())
    except ValueError as error:
        raise SettingsError(f"CARDPAY_SETTLEMENT_CUTOFF: {error}") from None
class Secret:
    """A secret setting (a private key): `reveal()` gives it to the one adapter that needs it;
    its repr and str are masked, so printing the settings, logging an object that holds it or an
    error message that formats it never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def _private_key(env: Mapping[str, str], name: str) -> Secret | None:
    """A hex private key (64 hex digits, 0x optional). The error names the variable, never the
    value."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    body = raw.removeprefix("0x").removeprefix("0X")
    if len(body) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in body):
        raise SettingsError(f"{name} must be a private key: 64 hex digits, 0x optional "
                            f"(got {len(raw)} characters, not shown)")
    return Secret("0x" + body.lower())


def _address(env: Mapping[str, str], name: str) -> str | None:
    """An account address (0x and 40 hex digits), lowercase."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    body = raw.removeprefix("0x").removeprefix("0X")
    if len(body) != 40 or any(ch not in "0123456789abcdefABCDEF" for ch in body):
        raise SettingsError(f"{name} must be an address: 0x and 40 hex digits, got {raw!r}")
    return "0x" + body.lower()


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cardpay"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    """None: start the embedded PostgreSQL in `data_dir`."""
    data_dir: Path = field(default_factory=default_data_dir)
    kafka_bootstrap: str | None = None
    """None: no Kafka; projectors tail the Postgres event log (embedded mode)."""
    kafka_topic: str = "cardpay.payments"
    kafka_group: str | None = None
    """None: `cardpay project` reads every partition (manual assignment). Set: the projector
    joins the Kafka consumer group `<kafka_group>:<topic>:<projector>` and shares the
    partitions with the other members (docs/adr/0016). One value per database: members that
    write different databases must not share a group."""
    rpc_url: str | None = None
    confirmations: int = 2
    max_block_range: int = 2000
    listener_name: str = "main"
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    """The card network's Standard Webhooks secrets; `cardpay api` refuses to start without."""
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    metrics_host: str = "127.0.0.1"
    """The address the `--metrics-port` endpoints of `listen`, `project` and `relay` bind
    (CARDPAY_METRICS_HOST): loopback unless told, as for the API; `0.0.0.0` in a container, so
    that a Prometheus in another container can scrape them (docker/compose.yaml)."""
    authorization_deadline_ms: int = 2000
    """The network stands in for an authorization not answered within this; a later approval
    is recorded as late and holds nothing."""
    parked_clearing_timeout: timedelta = timedelta(hours=72)
    """A clearing parked this long without its authorization becomes an exception (the sweep)."""
    sweep_interval_s: float = 60.0
    """How often `cardpay api` runs the network sweep in the background (0: never)."""
    network_advice_url: str | None = None
    """Where the card network takes our advices (a saga's reversal advice); None: advices
    wait in the effects outbox, visible in `cardpay sagas effects`, until it is set."""
    spend_timeout: timedelta = timedelta(minutes=10)
    """How long an approved spend may take to be seen on chain at depth before the card-payment
    saga undoes the payment (reversal advice, hold voided)."""
    over_clearing: str = "exception"
    """What the card-payment saga does when the network clears more than the Safe paid on
    chain: `exception` (finance collects; the default) or `incremental_spend` (a second spend
    from the Safe for the shortfall; its failure is then the exception)."""
    saga_poll_s: float = 0.5
    """How long `cardpay sagas run` waits for new events before it looks at timers and effects."""
    api_max_in_flight: int = 48
    """Network requests `cardpay api` works on at once; more are answered 503 at once
    (admission control): a queue longer than the API can serve within the network's deadline
    would make every answer late (docs/benchmarks.md)."""
    settlement_cutoff: time = field(default_factory=lambda: parse_cutoff("02:00"))
    """The daily settlement cut-off (UTC, `CARDPAY_SETTLEMENT_CUTOFF` "HH:MM"): day D's batch
    is matched against the network's report at this time on D + 1 (the report is sent then)."""
    relayer_key: Secret | None = field(default=None, repr=False)
    """The spend relayer's private key (CARDPAY_RELAYER_KEY): signs SpenderModule.spend."""
    settlement_key: Secret | None = field(default=None, repr=False)
    """The settlement account owner's private key (CARDPAY_SETTLEMENT_KEY): signs refunds."""
    tx_stuck_after: timedelta = timedelta(seconds=120)
    """A transaction not mined this long after it was signed is replaced with the same nonce
    and higher fees (CARDPAY_TX_STUCK_AFTER)."""
    tx_signer: str = "key"
    """How our transactions are sent (CARDPAY_TX_SIGNER): `key` — signed with
    CARDPAY_RELAYER_KEY / CARDPAY_SETTLEMENT_KEY; `impersonate` — sent unsigned as the accounts
    the contracts expect, through Anvil's `anvil_impersonateAccount` (a fork of Gnosis Chain,
    where nobody has Gnosis Pay's keys; docs/adr/0019)."""
    relayer_address: str | None = None
    """With `impersonate`: the account spends are sent as (CARDPAY_RELAYER_ADDRESS; default
    the first enabled module of the preset's Spender module, read from the chain: the Spender
    module takes `spend` only from its enabled modules)."""
    settlement_sender: str | None = None
    """With `impersonate`: the account refunds are sent as (CARDPAY_SETTLEMENT_SENDER;
    default the settlement Safe's first owner, `getOwners()`, read from the node)."""

    @property
    def impersonate(self) -> bool:
        return self.tx_signer == "impersonate"

    @property
    def sends_spends(self) -> bool:
        """Whether a spend relayer can run: a key, or impersonation."""
        return self.impersonate or self.relayer_key is not None

    @property
    def sends_refunds(self) -> bool:
        """Whether a refund sender can run: a key, or impersonation."""
        return self.impersonate or self.settlement_key is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = env.get("CARDPAY_DATA_DIR")
        settings = cls(
            database_url=_database_url(env),
            data_dir=Path(data_dir) if data_dir else default_data_dir(),
            kafka_bootstrap=env.get("CARDPAY_KAFKA_BOOTSTRAP") or None,
            kafka_topic=env.get("CARDPAY_KAFKA_TOPIC") or "cardpay.payments",
            kafka_group=(env.get("CARDPAY_KAFKA_GROUP") or "").strip() or None,
            rpc_url=env.get("CARDPAY_RPC_URL") or None,
            confirmations=_int(env, "CARDPAY_CONFIRMATIONS", 2),
            max_block_range=_int(env, "CARDPAY_MAX_BLOCK_RANGE", 2000),
            listener_name=env.get("CARDPAY_LISTENER_NAME") or "main",
            webhook_secrets=_webhook_secrets(env),
            api_host=(env.get("CARDPAY_API_HOST") or "").strip() or "127.0.0.1",
            api_port=_int(env, "CARDPAY_API_PORT", 8080),
            metrics_host=(env.get("CARDPAY_METRICS_HOST") or "").strip() or "127.0.0.1",
            authorization_deadline_ms=_int(env, "CARDPAY_AUTHORIZATION_DEADLINE_MS", 2000),
            parked_clearing_timeout=parse_duration(
                "CARDPAY_PARKED_CLEARING_TIMEOUT",
                env.get("CARDPAY_PARKED_CLEARING_TIMEOUT") or "72h"),
            sweep_interval_s=_seconds(env, "CARDPAY_SWEEP_INTERVAL_S", 60.0),
            api_max_in_flight=_int(env, "CARDPAY_API_MAX_IN_FLIGHT", 48),
            network_advice_url=(env.get("CARDPAY_NETWORK_ADVICE_URL") or "").strip() or None,
            spend_timeout=parse_duration("CARDPAY_SPEND_TIMEOUT",
                                         env.get("CARDPAY_SPEND_TIMEOUT") or "10m"),
            over_clearing=_choice(env, "CARDPAY_OVER_CLEARING", "exception",
                                  ("exception", "incremental_spend")),
            saga_poll_s=_seconds(env, "CARDPAY_SAGA_POLL_S", 0.5),
            settlement_cutoff=_cutoff(env),
            relayer_key=_private_key(env, "CARDPAY_RELAYER_KEY"),
            settlement_key=_private_key(env, "CARDPAY_SETTLEMENT_KEY"),
            tx_stuck_after=parse_duration("CARDPAY_TX_STUCK_AFTER",
                                          env.get("CARDPAY_TX_STUCK_AFTER") or "120s"),
            tx_signer=_choice(env, "CARDPAY_TX_SIGNER", "key", ("key", "impersonate")),
            relayer_address=_address(env, "CARDPAY_RELAYER_ADDRESS"),
            settlement_sender=_address(env, "CARDPAY_SETTLEMENT_SENDER"),
        )
        if settings.confirmations < 0:
            raise SettingsError(f"CARDPAY_CONFIRMATIONS must be 0 or more, got "
                                f"{settings.confirmations}")
        if settings.max_block_range < 1:
            raise SettingsError(f"CARDPAY_MAX_BLOCK_RANGE must be at least 1, got "
                                f"{settings.max_block_range}")
        if settings.authorization_deadline_ms < 1:
            raise SettingsError(f"CARDPAY_AUTHORIZATION_DEADLINE_MS must be at least 1, got "
                                f"{settings.authorization_deadline_ms}")
        if settings.api_max_in_flight < 1:
            raise SettingsError(f"CARDPAY_API_MAX_IN_FLIGHT must be at least 1, got "
                                f"{settings.api_max_in_flight}")
        if not 1 <= settings.api_port <= 65535:
            raise SettingsError(f"CARDPAY_API_PORT must be a TCP port (1-65535), got "
                                f"{settings.api_port}")
        return settings

    @property
    def outbox_topic(self) -> str:
        """Every process writes the outbox, Kafka configured or not: a process started without
        Kafka settings must not silently keep its events from the relay."""
        return self.kafka_topic

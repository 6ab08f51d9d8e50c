"""Which addresses mean what: the `gnosis` preset (mainnet Gnosis Pay) and `local` (our replicas).

Sources for every mainnet address: ../shared/gnosis-pay-onchain.md (§1 tokens, §2 contracts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.money import Currency

ZERO = "0x" + "00" * 20


@dataclass(frozen=True)
class ChainConfig:
    chain_id: int
    settlement: str
    spender_modules: frozenset[str]
    tokens: Mapping[str, Currency]
    """Every token address read (v1 mirrors included) → its currency."""
    mirrors: Mapping[str, str] = field(default_factory=dict)
    """v1 "frontend" → v2 token: the frontend re-emits the v2 Transfer in the same transaction."""
    cashback_senders: frozenset[str] = frozenset()
    referral_senders: frozenset[str] = frozenset()
    ignored_senders: frozenset[str] = frozenset()
    """Senders whose transfers are never card refunds (post-incident migration distributors)."""
    operational_wallets: frozenset[str] = frozenset()
    """Issuer wallets that move funds to/from the settlement account: neither spend nor refund."""
    match_refunds: bool = True
    """Match settlement transfers to submitted refunds (off in observer mode: nothing is submitted)."""
    refunds_matched_from: int = 0
    """With `match_refunds`, the first block whose settlement transfers are matched: on a fork,
    the blocks up to the fork's are history cardpay sent nothing in (observed only)."""
    name: str = "custom"
    roles_modules: frozenset[str] = frozenset()
    """Cardholders' Roles modules whose allowance events (ConsumeAllowance, SetAllowance) are
    read, so the daily allowance left is known without asking the node."""
    spend_module: str | None = None
    """The Spender module new spends go through, where the preset reads several (mainnet's
    old and new); None: the only one."""
    relayer: str | None = None
    """The account that sends this chain's spends (mainnet: Gnosis Pay's delegate EOA, whose
    calls carry a signature of the Spender module's enabled module). Not whom cardpay acts as on a
    fork: that is the Spender module's first enabled module, read from the chain
    (`cardpay.bootstrap.relayer.spend_sender_address`), or CARDPAY_RELAYER_ADDRESS."""

    def __post_init__(self) -> None:
        """Addresses compare as lowercase hex everywhere; checksummed input is normalized here."""
        low = str.lower
        object.__setattr__(self, "settlement", low(self.settlement))
        for name in ("spender_modules", "cashback_senders", "referral_senders",
                     "ignored_senders", "operational_wallets", "roles_modules"):
            object.__setattr__(self, name, frozenset(map(low, getattr(self, name))))
        for name in ("spend_module", "relayer"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else low(value))
        object.__setattr__(self, "tokens", {low(a): c for a, c in self.tokens.items()})
        object.__setattr__(self, "mirrors", {low(a): low(b) for a, b in self.mirrors.items()})

    @property
    def log_addresses(self) -> list[str]:
        return sorted(self.spender_modules | set(self.tokens) | self.roles_modules)

    @property
    def log_topics(self) -> list[str]:
        """The topic0 alternatives of the eth_getLogs filter."""
        from listener.decode import (
            CONSUME_ALLOWANCE_TOPIC,
            SET_ALLOWANCE_TOPIC,
            SPEND_TOPIC,
            TRANSFER_TOPIC,
        )

        if not self.roles_modules:
            return [SPEND_TOPIC, TRANSFER_TOPIC]
        return [SPEND_TOPIC, TRANSFER_TOPIC, CONSUME_ALLOWANCE_TOPIC, SET_ALLOWANCE_TOPIC]

    def subscribes(self, address: str, topic0: str | None) -> bool:
        """Whether the live listener's eth_getLogs filter would return this log."""
        from listener.decode import (
            CONSUME_ALLOWANCE_TOPIC,
            SET_ALLOWANCE_TOPIC,
            SPEND_TOPIC,
            TRANSFER_TOPIC,
        )

        if topic0 == SPEND_TOPIC:
            return address in self.spender_modules
        if topic0 in (CONSUME_ALLOWANCE_TOPIC, SET_ALLOWANCE_TOPIC):
            return address in self.roles_modules
        return topic0 == TRANSFER_TOPIC and address in self.tokens

    def canonical(self, token: str) -> str:
        return self.mirrors.get(token, token)


def _lower(*addresses: str) -> frozenset[str]:
    return frozenset(a.lower() for a in addresses)


EURE_V1 = "0xcb444e90d8198415266c6a2724b7900fb12fc56e"
EURE_V2 = "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
GBPE_V1 = "0x5cb9073902f2035222b9749f8fb0c9bfe5527108"
GBPE_V2 = "0x8e34bfec4f6eb781f9743d9b4af99cd23f9b7053"
USDCE = "0x2a22f9c3b484c3629090feed35f17ff8f88f76f0"
GNO = "0x9c58bacc331c9aa871afd802db6379a98e80cedb"

GNOSIS = ChainConfig(
    name="gnosis",
    chain_id=100,
    settlement="0x4822521e6135cd2599199c83ea35179229a172ee",
    spender_modules=_lower(
        "0xcFF260bfbc199dC82717494299b1AcADe25F549b",  # 2023-12 → 2026-06-04
        "0x5f07734E2B9C4dE6f9C32253d485741800da3F8a",  # from 2026-06-04
    ),
    spend_module="0x5f07734E2B9C4dE6f9C32253d485741800da3F8a",
    relayer="0x90830ed558f12d826370dc52e9d87947a7f18de9",
    tokens={
        EURE_V2: Currency("EURe", 18), EURE_V1: Currency("EURe", 18),
        GBPE_V2: Currency("GBPe", 18), GBPE_V1: Currency("GBPe", 18),
        USDCE: Currency("USDCe", 6), GNO: Currency("GNO", 18),
    },
    mirrors={EURE_V1: EURE_V2, GBPE_V1: GBPE_V2},
    cashback_senders=_lower("0xCdF50be9061086e2eCfE6e4a1BF9164d43568EEC"),
    referral_senders=_lower("0xB2e7803Ce9AA69ca0F82256Ff1eC5C9983608E04"),
    ignored_senders=_lower("0xbb897a566146fdb959ddde80ce00c50b4f5be03f"),
    operational_wallets=_lower(
        "0x2B33C1aB1fcD2b5F29Bb7306cA5F1919AE06fA39", "0x9995bf91E32DCe9c3D4608334451562B3Ef8Cc7F",
        "0x9f6e8DeC954873Afc3dD3Ab66C3617b5208Dcf41", "0x3F4126bD41CA0d0F23Bf9428bEF08F3DF416c402",
        "0x514D3248B123fF9f0990AeaA2F3cCecdc0FD1453", "0x0c6eeb232800fb86215438c4f7ae032b5463586c",
    ),
    match_refunds=False,
)


def local_config(deployment: Mapping[str, Any], *, match_refunds: bool = True) -> ChainConfig:
    """The `local` preset from a deployment description (`LocalDeployment.to_dict()`)."""
    tokens = {
        str(t["address"]).lower(): Currency(symbol, int(t["decimals"]))
        for symbol, t in deployment["tokens"].items()
    }
    mirrors = {
        str(t["mirror"]).lower(): str(t["address"]).lower()
        for t in deployment["tokens"].values() if t.get("mirror")
    }
    for mirror, canonical in mirrors.items():
        tokens[mirror] = tokens[canonical]
    return ChainConfig(
        name="local",
        chain_id=int(deployment["chain_id"]),
        settlement=str(deployment["settlement_account"]).lower(),
        spender_modules=_lower(str(deployment["spender_module"])),
        tokens=tokens,
        mirrors=mirrors,
        match_refunds=match_refunds,
        roles_modules=frozenset(str(m).lower() for m in deployment.get("roles_modules", ())),
    )


def load_preset(name: str, deployment_file: Path | None = None) -> ChainConfig:
    if name == "gnosis":
        return GNOSIS
    if name == "local":
        if deployment_file is None or not deployment_file.is_file():
            raise FileNotFoundError(
                f"the local preset needs the deployment file written by the deploy step "
                f"({deployment_file or 'none given'})"
            )
        return local_config(json.loads(deployment_file.read_text()))
    raise ValueError(f"unknown preset {name!r} (gnosis or local)")

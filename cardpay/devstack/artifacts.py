"""Local replicas of the Gnosis Pay contracts: compiled artifacts and (in `.local`) a web3 helper.

This module only reads JSON (standard library); `cardpay.devstack.local_chain` pulls in web3.

Artifacts are read from ``<repo>/contracts/artifacts`` (found relative to this package, which
works for a source checkout and an editable install), or from ``$CARDPAY_CONTRACTS_DIR/artifacts``
when that variable points at another ``contracts/`` directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cardpay.errors import CardpayError

__all__ = [
    "ArtifactError",
    "ContractArtifact",
    "artifacts_dir",
    "contracts_dir",
    "load_artifact",
]


class ArtifactError(CardpayError, RuntimeError):
    """A compiled contract artifact is missing or malformed."""


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract, as written by tools/compile_contracts.py."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    source_sha256: str

    def event_abi(self, event_name: str) -> dict[str, Any]:
        for item in self.abi:
            if item.get("type") == "event" and item.get("name") == event_name:
                return item
        raise ArtifactError(f"{self.name} has no event {event_name}")


def contracts_dir() -> Path:
    """The ``contracts/`` directory (env ``CARDPAY_CONTRACTS_DIR`` overrides)."""
    override = os.environ.get("CARDPAY_CONTRACTS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "contracts"


def artifacts_dir() -> Path:
    return contracts_dir() / "artifacts"


def load_artifact(name: str) -> ContractArtifact:
    """Load ``<artifacts_dir>/<name>.json`` (cached per directory and name)."""
    return _load(str(artifacts_dir()), name)


@cache
def _load(directory: str, name: str) -> ContractArtifact:
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise ArtifactError(
            f"contract artifact {path} not found: build it with "
            "`python tools/compile_contracts.py` (after `npm ci`), or set CARDPAY_CONTRACTS_DIR"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ContractArtifact(
            name=str(data["contractName"]),
            abi=list(data["abi"]),
            bytecode=str(data["bytecode"]),
            deployed_bytecode=str(data["deployedBytecode"]),
            compiler_version=str(data["compiler"]["version"]),
            source_sha256=str(data["sourceSha256"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"malformed contract artifact {path}: {exc!r}") from exc

"""Local replicas of the Gnosis Pay contracts: compiled artifacts and (in `.local`) a web3 helper.

This module only reads JSON (standard library); `cardpay.devstack.local_chain` pulls in web3.

Artifacts are read from ``<repo>/contracts/artifacts`` (found relative to this package, which
works for a source checkout and an editable install), or from ``$CARDPAY_CONTRACTS_DIR/artifacts``
when that variable points at another ``contracts/`` directory.

The settlement account is not a replica: it is Safe v1.3.0 itself (`GnosisSafeL2` behind a
`GnosisSafeProxy`, refunds through `MultiSend`), read by `load_safe_artifact` from the build of
the npm package ``@gnosis.pm/safe-contracts`` pinned in package.json (``npm ci`` installs it).
"""

from __future__ import annotations

import hashlib
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
    "load_safe_artifact",
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


SAFE_ARTIFACTS = {
    "GnosisSafeL2": "GnosisSafeL2.sol/GnosisSafeL2.json",
    "GnosisSafeProxy": "proxies/GnosisSafeProxy.sol/GnosisSafeProxy.json",
    "MultiSend": "libraries/MultiSend.sol/MultiSend.json",
}
"""The Safe v1.3.0 contracts the settlement account is made of, under the package's
``build/artifacts/contracts``."""


def safe_package_dir() -> Path:
    """``<repo>/node_modules/@gnosis.pm/safe-contracts``."""
    return Path(__file__).resolve().parents[2] / "node_modules" / "@gnosis.pm" / "safe-contracts"


def load_safe_artifact(name: str) -> ContractArtifact:
    """One of `SAFE_ARTIFACTS`, as published by Safe (a Hardhat artifact: its compiler is
    named by the package version, its hash is the artifact file's)."""
    return _load_safe(str(safe_package_dir()), name)


@cache
def _load_safe(package: str, name: str) -> ContractArtifact:
    relative = SAFE_ARTIFACTS.get(name)
    if relative is None:
        raise ArtifactError(f"no Safe contract {name!r} (known: {', '.join(SAFE_ARTIFACTS)})")
    path = Path(package) / "build" / "artifacts" / "contracts" / relative
    try:
        raw = path.read_bytes()
        version = json.loads((Path(package) / "package.json").read_text())["version"]
        data = json.loads(raw)
        return ContractArtifact(
            name=str(data["contractName"]), abi=list(data["abi"]),
            bytecode=str(data["bytecode"]), deployed_bytecode=str(data["deployedBytecode"]),
            compiler_version=f"@gnosis.pm/safe-contracts {version}",
            source_sha256=hashlib.sha256(raw).hexdigest())
    except FileNotFoundError:
        raise ArtifactError(f"Safe contract artifact {path} not found: run `npm ci` in "
                            f"{safe_package_dir().parents[2]} (installs @gnosis.pm/safe-contracts)"
                            ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"malformed Safe contract artifact {path}: {exc!r}") from exc


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

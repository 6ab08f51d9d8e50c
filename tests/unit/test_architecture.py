"""`domain/` imports the standard library only (import-linter checks the layers; this checks that
no third-party package at all, listed in the contract or not, creeps into the model)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DOMAIN = Path(__file__).resolve().parents[2] / "domain"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_domain_imports_only_the_standard_library() -> None:
    files = sorted(DOMAIN.rglob("*.py"))  # subpackages too (domain/ledger)
    assert files, "domain package not found"
    offenders = {
        f"{path.relative_to(DOMAIN)}: {name}"
        for path in files
        for name in _imports(path)
        if name != "domain" and name not in sys.stdlib_module_names and name != "__future__"
    }
    assert not offenders, sorted(offenders)

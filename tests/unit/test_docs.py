"""The README documents every CARDPAY_* variable the code reads, and the CLI's help names the
ones a user sets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cardpay.cli.main import EPILOG

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"CARDPAY_[A-Z][A-Z_]*[A-Z]")
SOURCES = ["cardpay", "domain", "listener", "projector", "sagas", "tools", "benchmarks", "scripts"]
SUFFIXES = {".py", ".sh", ".ts", ".toml"}
SKIP = {"node_modules", "__pycache__", ".ponder", "generated"}


def _names_in_code() -> set[str]:
    names: set[str] = set()
    for top in SOURCES:
        for folder, subfolders, files in os.walk(ROOT / top):
            subfolders[:] = [d for d in subfolders if d not in SKIP]
            for file in files:
                if Path(file).suffix in SUFFIXES:
                    text = (Path(folder) / file).read_text(errors="replace")
                    names |= set(NAME.findall(text))
    return names


def test_the_readme_lists_every_variable() -> None:
    code = _names_in_code()
    assert {"CARDPAY_DATABASE_URL", "CARDPAY_RPC_URL", "CARDPAY_PROGRESS"} <= code  # scan works
    readme = (ROOT / "README.md").read_text()
    assert sorted(code - set(NAME.findall(readme))) == []


def test_the_help_names_every_setting_of_the_settings_object() -> None:
    settings = set(NAME.findall((ROOT / "cardpay" / "settings.py").read_text()))
    assert len(settings) >= 8
    assert sorted(settings - set(NAME.findall(EPILOG))) == []


def test_the_first_test_command_of_the_readme_is_make_check() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    tests = [c for c in commands if "make" in c.split() or "pytest" in c]
    assert tests and tests[0] == "make check"

"""docker/prometheus/alerts.yml: `promtool check rules` and `promtool test rules` (Debian's
`prometheus` package, installed by scripts/setup.sh) pass; every metric the rules and their
tests name is one the code exports; every alert has a severity, says what to do, and has a
firing and a quiet case in alerts_test.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metrics import series_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "docker" / "prometheus" / "alerts_test.yml"
METRIC = re.compile(r"\bcardpay_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool missing: run scripts/setup.sh (Debian package prometheus)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


@pytest.mark.integration
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.unit
def test_every_metric_in_the_rules_is_exported() -> None:
    exported = series_names()
    named = {name for rule in rules() for name in METRIC.findall(rule["expr"])}
    named |= {name for rule in rules() for text in rule["annotations"].values()
              for name in METRIC.findall(text)}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    named |= {name for test in tests for series in test["input_series"]
              for name in METRIC.findall(series["series"])}
    assert named, "no metric found in the rules"
    assert sorted(named - exported) == []


@pytest.mark.unit
def test_every_alert_has_a_severity_what_to_do_and_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases: dict[str, set[bool]] = {}
    for test in tests:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]

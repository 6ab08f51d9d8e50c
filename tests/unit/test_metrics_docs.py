"""docs/metrics.md lists every metric the processes export, with its type, and nothing they do
not export (a metric added, renamed or retyped in the code fails here until the docs follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.metrics import families

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(cardpay_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", re.MULTILINE)


def test_the_metrics_doc_lists_every_exported_metric_with_its_type() -> None:
    documented = dict(ROW.findall(DOC.read_text()))
    exported = families()
    assert len(exported) > 30  # the registries were found
    assert {name: kind for name, kind in exported.items()
            if documented.get(name) != kind} == {}
    assert sorted(set(documented) - set(exported)) == []

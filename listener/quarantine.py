"""Why a log or command was quarantined, as one of a small fixed set of reason classes.

Quarantine reasons are free text (they name addresses, amounts, hashes); a metric label must not
be. `reason_class` maps every reason the listener and its sink write to one of `REASON_CLASSES`.
"""

from __future__ import annotations

import re

REASON_CLASSES = ("duplicate", "malformed", "undecodable", "unmatched_refund", "unmatched_spend",
                  "unrecorded_block", "refused")
"""`refused`: the payment model refused the command (and any reason not recognized)."""

_PATTERNS = (
    ("duplicate", re.compile(r"^duplicate log")),
    ("unrecorded_block", re.compile(r"whose header is not recorded")),
    ("unmatched_refund", re.compile(r"matches no submitted refund")),
    ("unmatched_spend", re.compile(r"^Spend (without its token Transfer|from \S+ of token .*not "
                                   r"configured|to \S+, not the settlement account)")),
    ("undecodable", re.compile(r"^(Transfer|Spend): expected|not an address|^anonymous log|"
                               r"^unknown event topic0")),
    ("malformed", re.compile(r"^eth_getLogs returned|^log is not an object|^missing field|"
                             r"^\w+: (expected|not hex|not a hex)")),
)


def reason_class(reason: str) -> str:
    for name, pattern in _PATTERNS:
        if pattern.search(reason):
            return name
    return "refused"

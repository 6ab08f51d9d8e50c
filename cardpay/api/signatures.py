"""Standard Webhooks signatures on the card network's requests, with key rotation.

`webhook-signature: v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>`,
several space-separated signatures allowed, the timestamp within ±5 minutes. Verification is the
maintained `standardwebhooks` package's, tried with each configured secret (rotation: the old and
the new secret are both configured while the network switches).

Before the library, the headers are checked here so that a refusal names its reason (unsigned,
malformed, stale, future, bad_signature), counted by reason; the library's errors are plain
strings. The library takes the body as text and so cannot check a body that is not UTF-8; for
those the same HMAC (the library's `hmac_data`) is computed over the raw bytes here, so a signed
body of garbage bytes is still recognised as signed and quarantined rather than mistaken for an
attack.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook, WebhookVerificationError, hmac_data

TOLERANCE_SECONDS = 5 * 60
MAX_WEBHOOK_ID = 256


class SignatureRejected(Exception):
    """The request is not provably from the network; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


REASONS = ("unsigned", "malformed", "stale", "future", "bad_signature")


@dataclass(frozen=True, slots=True)
class _Secret:
    hook: Webhook
    key: bytes


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret, decoded as the library does; ValueError if
    it is not base64 or empty."""
    raw = secret.removeprefix("whsec_").rstrip("=")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


class SignatureVerifier:
    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is needed")
        self._secrets = [_Secret(Webhook(s), secret_key(s)) for s in secrets]

    def verify(self, body: bytes, headers: Mapping[str, str]) -> str:
        """The webhook id of a correctly signed, fresh request; `SignatureRejected` otherwise."""
        webhook_id = headers.get("webhook-id") or ""
        timestamp = headers.get("webhook-timestamp") or ""
        signature = headers.get("webhook-signature") or ""
        if not (webhook_id and timestamp and signature):
            raise SignatureRejected("unsigned", "webhook-id, webhook-timestamp and "
                                    "webhook-signature headers are required")
        if len(webhook_id) > MAX_WEBHOOK_ID or not _printable_ascii(webhook_id):
            raise SignatureRejected("malformed", "webhook-id must be printable ASCII, at most "
                                    f"{MAX_WEBHOOK_ID} characters")
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise SignatureRejected("malformed", "webhook-timestamp must be Unix seconds")
        age = time.time() - int(timestamp)
        if age > TOLERANCE_SECONDS:
            raise SignatureRejected("stale", f"webhook-timestamp is {int(age)} s old "
                                    f"(tolerance {TOLERANCE_SECONDS} s)")
        if age < -TOLERANCE_SECONDS:
            raise SignatureRejected("future", f"webhook-timestamp is {int(-age)} s ahead "
                                    f"(tolerance {TOLERANCE_SECONDS} s)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        for secret in self._secrets:
            if self._matches(secret, text, body, webhook_id, timestamp, signature):
                return webhook_id
        raise SignatureRejected("bad_signature", "no signature matches a configured secret")

    @staticmethod
    def _matches(secret: _Secret, text: str | None, body: bytes, webhook_id: str,
                 timestamp: str, signature: str) -> bool:
        if text is None:
            return _matches_bytes(secret.key, body, webhook_id, timestamp, signature)
        headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp,
                   "webhook-signature": signature}
        try:
            secret.hook.verify(text, headers, json_parse=False)
        except WebhookVerificationError as exc:
            if "too old" in str(exc) or "too new" in str(exc):  # the checked bound, crossed now
                raise SignatureRejected("stale" if "old" in str(exc) else "future",
                                        str(exc)) from exc
            return False
        except ValueError as exc:  # "v1" without ",", or a signature that is not base64
            raise SignatureRejected("malformed", "webhook-signature must be space-separated "
                                    "`v1,<base64>` entries") from exc
        return True


def _matches_bytes(key: bytes, body: bytes, webhook_id: str, timestamp: str,
                   signature: str) -> bool:
    expected = hmac_data(key, f"{webhook_id}.{timestamp}.".encode() + body)
    for entry in signature.split(" "):
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SignatureRejected("malformed", "webhook-signature must be space-separated "
                                    "`v1,<base64>` entries") from None
        if hmac.compare_digest(expected, given):
            return True
    return False


def _printable_ascii(text: str) -> bool:
    return all(33 <= ord(c) <= 126 for c in text)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for a body (what the network, the simulator and the tests
    send). Bytes that are not UTF-8 are signed as bytes, as the scheme defines."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        mac = hmac_data(secret_key(secret), f"{webhook_id}.{timestamp}.".encode() + body)
        return "v1," + base64.b64encode(mac).decode("ascii")
    return Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, UTC), text)

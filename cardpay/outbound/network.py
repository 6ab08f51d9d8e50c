"""The card network's advice endpoint over HTTP: a JSON body signed like the network's own
webhooks to us (Standard Webhooks, the shared secret), the idempotency key as `webhook-id`.

2xx: delivered. 4xx: refused for good (`AdviceRefused`). 5xx, a timeout or no connection: the
network cannot take it now (`PartyUnavailable`; the effect stays pending and is sent again).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from cardpay.handlers.effects import PartyUnavailable
from cardpay.handlers.network_advices import AdviceRefused, ReversalAdvice

ADVICE_PATH = "/advices/reversal"


class HttpNetworkAdvices:
    def __init__(self, url: str, secret: str, *, timeout_s: float = 5.0,
                 client: httpx.Client | None = None) -> None:
        self._url = url.rstrip("/") + ADVICE_PATH
        self._hook = Webhook(secret)
        self._client = client or httpx.Client(timeout=timeout_s)

    def __repr__(self) -> str:  # never the secret
        return f"HttpNetworkAdvices({self._url!r})"

    def close(self) -> None:
        self._client.close()

    def send(self, advice: ReversalAdvice) -> str:
        body = json.dumps({
            "type": "authorization_reversal_advice",
            "authorization_id": advice.authorization_id,
            "amount": str(advice.amount), "currency": advice.currency,
            "decimals": advice.decimals, "reason": advice.reason,
        }, separators=(",", ":"))
        now = datetime.now(UTC)
        headers = {"webhook-id": advice.idempotency_key,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self._hook.sign(advice.idempotency_key, now, body),
                   "content-type": "application/json"}
        try:
            reply = self._client.post(self._url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise PartyUnavailable(f"the network's advice endpoint {self._url} did not answer "
                                   f"({type(exc).__name__})") from exc
        if reply.status_code >= 500:
            raise PartyUnavailable(f"the network's advice endpoint answered "
                                   f"{reply.status_code}")
        if reply.status_code >= 400:
            raise AdviceRefused(f"the network refused the reversal advice of "
                                f"{advice.authorization_id}: {reply.status_code} "
                                f"{reply.text[:200]}")
        try:
            answer = reply.json()
        except ValueError:
            answer = {}
        return str(answer.get("reference") or advice.idempotency_key) \
            if isinstance(answer, dict) else advice.idempotency_key

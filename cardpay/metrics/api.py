"""Prometheus metrics of the HTTP API: latency per route, authorization decisions, refused
signatures, bodies and bearer tokens; and the state gauges the API's refresh loop keeps
(`cardpay.metrics.state`, on the same registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
"""Fine below 100 ms, where the authorization goal lies; 2 s is the network's deadline."""


class ApiMetrics:
    """One registry per process (the app serves it at /metrics). Labels are bounded: the route
    template (never the raw path) and the status; reasons are fixed codes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "cardpay_api_request_seconds", "HTTP request latency by route template and status",
            ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.webhook_rejections = Counter(
            "cardpay_webhook_rejections_total",
            "Network requests refused before anything was stored, by reason (401: unsigned, "
            "malformed, stale, future, bad_signature; 413: too_large)", ["reason"], registry=r)
        self.network_unavailable = Counter(
            "cardpay_network_unavailable_total",
            "Network requests answered 503 with nothing recorded, by reason (overloaded: more "
            "than CARDPAY_API_MAX_IN_FLIGHT in progress; past_deadline: an authorization that "
            "waited past the network's deadline; not_yet_known: a message about an "
            "authorization or return that has not arrived; unavailable: a dependency or a "
            "concurrent writer; database)", ["reason"], registry=r)
        self.network_rejected = Counter(
            "cardpay_network_rejected_total",
            "Signed network bodies refused and quarantined, by reason "
            "(not_json, schema, unknown_type, invalid)", ["reason"], registry=r)
        self.token_rejections = Counter(
            "cardpay_api_token_rejections_total",
            "Requests to the finance and ops routes the bearer guard refused, by reason (401: "
            "missing, not_bearer, malformed, unknown_or_revoked; 403: insufficient_scope; 503: "
            "unavailable)", ["reason"], registry=r)
        self.authorization_decisions = Counter(
            "cardpay_authorization_decisions_total",
            "Authorization requests decided and committed, by outcome (approved, partial, "
            "declined) and reason (the decline reason's code; none for approvals). Repeated "
            "deliveries are not counted", ["outcome", "reason"], registry=r)
        self.sweep_holds_expired = Counter(
            "cardpay_network_sweep_holds_expired_total",
            "Authorization holds the network sweep released at their timeout (ledger and "
            "payment)", registry=r)
        self.sweep_exceptions = Counter(
            "cardpay_network_sweep_exceptions_total",
            "Exceptions the network sweep raised: clearings parked past "
            "CARDPAY_PARKED_CLEARING_TIMEOUT with no authorization", registry=r)
        self.sweep_failures = Counter(
            "cardpay_network_sweep_failures_total",
            "Network sweeps that failed (logged; the next interval retries)", registry=r)

    def authorization_decided(self, outcome: str, reason: str) -> None:
        """`cardpay.handlers.network.DecisionObserver`: one committed decision."""
        self.authorization_decisions.labels(outcome, reason).inc()

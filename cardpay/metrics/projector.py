"""Prometheus metrics of a projector: events applied, errors, lag behind its feed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from cardpay.runtime.supervise import supervised_errors


class ProjectorMetrics:
    """One registry per process. Errors are the supervision loop's counter, component
    "projector"; lag is set when the feed can tell it (Kafka: high watermark minus position)."""

    def __init__(self, registry: CollectorRegistry | None = None, projector: str = "payments"
                 ) -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, {"projector": projector}
        self.applied = Counter("cardpay_projector_applied_total",
                               "Events applied to the read model (duplicates not counted)",
                               ["projector"], registry=r).labels(**labels)
        self.messages = Counter("cardpay_projector_messages_total",
                                "Feed messages consumed (applied, duplicate or quarantined)",
                                ["projector"], registry=r).labels(**labels)
        self.lag = Gauge("cardpay_projector_lag_messages",
                         "Messages on the feed beyond the projector's position", ["projector"],
                         registry=r).labels(**labels)
        self.errors = supervised_errors(r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on host:port (loopback by default)."""
        start_http_server(port, addr=host, registry=self.registry)

"""Prometheus metrics (prefix `cardpay_`), fed by the listener's range results and RPC attempts."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cardpay.runtime.supervise import supervised_errors
from listener.poller import RangeResult
from listener.ports import Cursor
from listener.quarantine import REASON_CLASSES, reason_class


class ListenerMetrics:
    """One registry per process; `observe_range` is the listener's `on_range` hook and
    `rpc_attempt` the JSON-RPC client's observer."""

    def __init__(self, registry: CollectorRegistry | None = None, listener: str = "main") -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, {"listener": listener}
        self.head_block = Gauge("cardpay_chain_head_block", "Newest block the node reports",
                                ["listener"], registry=r).labels(**labels)
        self.processed_block = Gauge("cardpay_listener_processed_block",
                                     "Last block indexed (the cursor)", ["listener"],
                                     registry=r).labels(**labels)
        self.lag_blocks = Gauge("cardpay_listener_lag_blocks", "Head minus processed block",
                                ["listener"], registry=r).labels(**labels)
        self.lag_seconds = Gauge("cardpay_listener_lag_seconds",
                                 "Now minus the processed block's timestamp", ["listener"],
                                 registry=r).labels(**labels)
        self.logs = Counter("cardpay_listener_logs_total", "Logs read", ["listener"],
                            registry=r).labels(**labels)
        self._by_class = Counter("cardpay_listener_transfers_total",
                                 "Classified transfers by class", ["listener", "class"], registry=r)
        self._quarantined = Counter("cardpay_listener_quarantined_total",
                                    "Logs quarantined, by reason class: "
                                    + ", ".join(REASON_CLASSES), ["listener", "reason"],
                                    registry=r)
        for reason in REASON_CLASSES:  # every class exported from the first scrape, at 0
            self._quarantined.labels(listener=listener, reason=reason)
        self.reorgs = Counter("cardpay_listener_reorgs_total", "Reorgs detected", ["listener"],
                              registry=r).labels(**labels)
        self.reorg_depth = Histogram("cardpay_listener_reorg_depth_blocks", "Depth of reorgs",
                                     ["listener"], buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
                                     registry=r).labels(**labels)
        self.errors = supervised_errors(r)
        """Failed ranges, retried by the supervision loop (component `listener:<name>`)."""
        self._rpc_seconds = Histogram("cardpay_rpc_latency_seconds", "JSON-RPC attempt latency",
                                      ["method"], registry=r)
        self._rpc_errors = Counter("cardpay_rpc_errors_total", "Failed JSON-RPC attempts",
                                   ["method", "error"], registry=r)
        self._listener = listener

    def observe_range(self, result: RangeResult) -> None:
        if result.reorg_depth:
            self.reorgs.inc()
            self.reorg_depth.observe(result.reorg_depth)
            self.processed_block.set(result.from_block - 1)
            return
        self.processed_block.set(result.to_block)
        if result.head:
            self.head_block.set(result.head)
            self.lag_blocks.set(max(0, result.head - result.to_block))
        if result.to_block_time:
            self.lag_seconds.set(max(0.0, time.time() - result.to_block_time))
        self.logs.inc(result.logs)
        for kind, count in result.by_class.items():
            self._by_class.labels(listener=self._listener, **{"class": kind}).inc(count)

    def starting(self, cursor: Cursor | None, head: int | None) -> None:
        """Gauges from the stored cursor before the first range, so that a listener that starts
        caught up (no range to index) does not report block 0."""
        if cursor is not None:
            self.processed_block.set(cursor.block_number)
        if head is not None:
            self.head_block.set(head)
            if cursor is not None:
                self.lag_blocks.set(max(0, head - cursor.block_number))

    def log_quarantined(self, reason: str) -> None:
        """Counted when the row is written (in the sink's transaction), by reason class."""
        self._quarantined.labels(listener=self._listener, reason=reason_class(reason)).inc()

    def rpc_attempt(self, method: str, seconds: float, error: str | None) -> None:
        self._rpc_seconds.labels(method=method).observe(seconds)
        if error is not None:
            self._rpc_errors.labels(method=method, error=error).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on host:port (loopback by default)."""
        start_http_server(port, addr=host, registry=self.registry)

"""Prometheus metrics (prefix `cardpay_`), one module per component."""

from cardpay.metrics.listener import ListenerMetrics

__all__ = ["ListenerMetrics"]

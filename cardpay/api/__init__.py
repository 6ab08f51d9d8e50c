"""HTTP API: card-network ingress, health, readiness and metrics (see `app.create_app`)."""

from cardpay.api.app import create_app

__all__ = ["create_app"]

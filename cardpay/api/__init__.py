"""HTTP API: card-network ingress, the ops routes behind bearer tokens (`auth.require`),
health, readiness and metrics (see `app.create_app`)."""

from cardpay.api.app import create_app

__all__ = ["create_app"]

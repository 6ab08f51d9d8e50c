"""The local chain's listener configuration from a deployment (used by the demo's lifecycle
stack and the tests on Anvil)."""

from __future__ import annotations

from cardpay.devstack.local_chain import LocalDeployment
from listener.presets import ChainConfig, local_config


def chain_config(deployment: LocalDeployment) -> ChainConfig:
    return local_config(deployment.to_dict())

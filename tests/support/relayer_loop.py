"""A spend relayer polling for ever, as a worker process would (for kill -9 tests).

Usage: python -m tests.support.relayer_loop DEPLOYMENT_JSON
with CARDPAY_DATABASE_URL, CARDPAY_RPC_URL and CARDPAY_RELAYER_KEY set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cardpay.bootstrap.relayer import build_spend_relayer
from cardpay.bootstrap.sagas import build_runner
from cardpay.postgres.engine import make_engine
from cardpay.settings import Settings
from listener.presets import local_config


def main(deployment_file: str) -> None:
    settings = Settings.from_env()
    assert settings.database_url is not None
    engine = make_engine(settings.database_url)
    config = local_config(json.loads(Path(deployment_file).read_text()))
    relayer = build_spend_relayer(settings, engine, config, build_runner(settings, engine),
                                  batch=1)
    print("ready", flush=True)  # the test kills it from here on
    while True:
        if relayer.run_once() == 0:
            time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1])

"""What every cardpay-side benchmark sets up: the local preset file, embedded PostgreSQL with the
schema, and the environment the `cardpay` processes under test run with."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from benchmarks.workload import Workload
from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.postgres.engine import make_engine, upgrade


@dataclass(frozen=True)
class LocalStack:
    engine: Engine
    env: dict[str, str]
    deployment: Path


@contextmanager
def local_stack(workload: Workload, work_dir: Path) -> Iterator[LocalStack]:
    deployment = work_dir / "local-deployment.json"
    deployment.write_text(json.dumps(workload.deployment.to_dict()))
    with EmbeddedPostgres(work_dir / "pgdata") as pg:
        engine = make_engine(pg.url)
        try:
            upgrade(engine)
            env = {**os.environ, "CARDPAY_DATABASE_URL": pg.url, "CARDPAY_CONFIRMATIONS": "0",
                   "CARDPAY_DATA_DIR": str(work_dir)}
            yield LocalStack(engine, env, deployment)
        finally:
            engine.dispose()

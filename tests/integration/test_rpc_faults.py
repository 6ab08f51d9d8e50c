"""RPC faults between the listener and a real Anvil node: the index still ends complete and exact."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.bootstrap.demo import chain_config
from cardpay.bootstrap.listen import BATCH_SIZE, run_listener
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.runtime.supervise import Backoff
from listener.poller import Listener
from listener.rpc import HttpJsonRpc
from tests.support.faulty_proxy import Faults, FaultyProxy
from tests.support.indexing import canonical_views, fresh_index, project

pytestmark = pytest.mark.integration


def _traffic(chain: Any, blocks: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(blocks):
        chain.spend_many([(rng.choice(["EURe", "USDCe"]), rng.randrange(5), rng.randint(1, 10**9))
                          for _ in range(rng.randint(0, 4))])
        chain.w3.provider.make_request("anvil_mine", ["0x1"])


def _index_through(proxy: FaultyProxy, chain: Any, engine: Engine) -> Listener:
    config = chain_config(chain.deployment)
    rpc = HttpJsonRpc(proxy.url, timeout=0.3, retries=6, backoff=0.01, max_backoff=0.05,
                      batch_size=BATCH_SIZE)  # headers in batches, as `cardpay listen` fetches
    listener = Listener("faulty", rpc, ChainSinkHandler(unit_of_work_factory(engine, None),
                                                         chain_id=config.chain_id),
                        config, start_block=chain.deployment.deployed_at_block, confirmations=0,
                        max_range=64, initial_range=16)
    head = int(chain.w3.eth.block_number)

    async def until_caught_up() -> None:
        """The production loop (`run_listener`), stopped once the cursor reaches the head."""
        stop = asyncio.Event()

        async def watch() -> None:
            deadline = time.monotonic() + 120
            while not stop.is_set():
                cursor = await asyncio.to_thread(listener.cursor)
                if cursor is not None and cursor.block_number >= head:
                    stop.set()
                assert time.monotonic() < deadline, "the listener did not catch up within 120 s"
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await run_listener(listener, stop=stop, poll_interval=0.01,
                           backoff=Backoff(initial=0.01, maximum=0.05, jitter=0.01))
        await watcher

    asyncio.run(until_caught_up())
    return listener




@pytest.mark.parametrize(
    ("name", "faults"),
    [
        ("rate-limits-and-5xx", Faults(rate_limited=0.15, unavailable=0.1, seed=1)),
        ("timeouts", Faults(slow=0.1, slow_seconds=0.6, seed=2)),
        ("truncated-json", Faults(truncated=0.15, seed=3)),
        ("lagging-node", Faults(lagging=0.3, lag_blocks=4, seed=4)),
        ("too-many-results", Faults(max_log_range=4, seed=5)),
        ("everything", Faults(rate_limited=0.05, unavailable=0.05, slow=0.03, slow_seconds=0.6,
                              truncated=0.05, lagging=0.1, max_log_range=8, seed=6)),
    ],
)
def test_faults_end_with_the_complete_exact_index(
    name: str, faults: Faults, local_chain: Any, pg_engine: Engine, make_db: Any
) -> None:
    _traffic(local_chain, 40, seed=len(name))
    with FaultyProxy(local_chain.rpc_url, faults) as proxy:
        _index_through(proxy, local_chain, pg_engine)
    assert sum(faults.injected.values()) > 0, "no fault was injected: the test proved nothing"
    assert proxy.batches > 0  # the block headers' batches met the faults too
    project(pg_engine)
    ours = canonical_views(pg_engine)
    assert ours == fresh_index(make_db, local_chain)
    assert len(ours[0]) > 40

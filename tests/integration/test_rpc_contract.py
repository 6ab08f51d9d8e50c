"""The recorded-node fake and a real Anvil node answer the listener's RPC calls the same way.

This keeps `tests.support.chain.RecordedNode` honest: every listener test that uses it relies on
exactly these behaviours of a real node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC, Spend, Transfer, decode
from listener.errors import RpcError
from listener.logs import parse_log
from listener.ports import RpcClient
from listener.rpc import HttpJsonRpc
from tests.support.chain import EURE, SETTLEMENT, SPENDER, RecordedNode

pytestmark = pytest.mark.integration

# (node, addresses to filter, make a spend of `amount` and return its block number)
Setup = tuple[RpcClient, list[str], Callable[[int], int]]


@pytest.fixture(params=["recorded", "anvil"])
def node(request: pytest.FixtureRequest) -> Setup:
    if request.param == "recorded":
        fake = RecordedNode()
        counter = iter(range(1, 1000))

        def spend_fake(amount: int) -> int:
            n = next(counter)
            fake.add_spend(n, tx=n, amount=amount)
            return n

        return fake, [SPENDER, EURE, SETTLEMENT], spend_fake
    chain: Any = request.getfixturevalue("local_chain")
    rpc = HttpJsonRpc(chain.rpc_url)
    d = chain.deployment

    def spend_anvil(amount: int) -> int:
        tx = chain.spend("EURe", 0, amount)
        return int(chain.receipt(tx)["blockNumber"], 16)

    return rpc, [d.spender_module.lower(), d.token("EURe").address.lower()], spend_anvil


def _logs(rpc: RpcClient, addresses: list[str], lo: int, hi: int) -> list[Any]:
    return list(rpc.call("eth_getLogs", [{"fromBlock": hex(lo), "toBlock": hex(hi),
                                           "address": addresses,
                                           "topics": [[SPEND_TOPIC, TRANSFER_TOPIC]]}]))


def test_head_and_blocks_link_by_parent_hash(node: Setup) -> None:
    rpc, _, spend = node
    spend(10**18)
    spend(2 * 10**18)
    head = int(rpc.call("eth_blockNumber", []), 16)
    assert head >= 2
    previous = rpc.call("eth_getBlockByNumber", [hex(head - 1), False])
    block = rpc.call("eth_getBlockByNumber", [hex(head), False])
    assert block["parentHash"] == previous["hash"]
    assert int(block["timestamp"], 16) >= int(previous["timestamp"], 16)
    assert rpc.call("eth_getBlockByNumber", [hex(head + 100), False]) is None


def test_get_logs_returns_the_spend_and_its_transfer_only_within_the_range(node: Setup) -> None:
    rpc, addresses, spend = node
    first = spend(3 * 10**18)
    second = spend(4 * 10**18)
    logs = [parse_log(raw) for raw in _logs(rpc, addresses, second, second)]
    decoded = [decode(log) for log in logs]
    assert all(log.block_number == second for log in logs)
    spends = [d for d in decoded if isinstance(d, Spend)]
    transfers = [d for d in decoded if isinstance(d, Transfer)]
    assert [s.amount for s in spends] == [4 * 10**18]
    assert [t.value for t in transfers] == [4 * 10**18]
    assert transfers[0].log.tx_hash == spends[0].log.tx_hash
    assert transfers[0].log.log_index < spends[0].log.log_index
    both = _logs(rpc, addresses, first, second)
    assert len(both) == 2 * len(logs)
    with pytest.raises(RpcError, match="block height is"):
        _logs(rpc, addresses, second + 1, second + 1)


def test_get_logs_filters_by_emitter_and_topic0(node: Setup) -> None:
    rpc, addresses, spend = node
    block = spend(5 * 10**18)
    only_spend = [parse_log(r) for r in rpc.call("eth_getLogs", [{
        "fromBlock": hex(block), "toBlock": hex(block), "address": addresses,
        "topics": [[SPEND_TOPIC]]}])]
    assert [log.topics[0] for log in only_spend] == [SPEND_TOPIC]
    nobody = rpc.call("eth_getLogs", [{"fromBlock": hex(block), "toBlock": hex(block),
                                        "address": ["0x" + "77" * 20],
                                        "topics": [[SPEND_TOPIC, TRANSFER_TOPIC]]}])
    assert nobody == []

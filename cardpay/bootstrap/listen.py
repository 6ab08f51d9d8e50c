"""The listener's composition root: its adapters, the checks before it starts, and its reset.

Before a listener indexes anything, the node must be on the chain the preset names (chain id) and
on the chain this listener indexed before (chain id + genesis hash, stored per listener name):
otherwise its cursor, kept block hashes and payments belong to another chain, and indexing would
silently mix two chains or index nothing. `reset_listener` is the way out: it retracts every
payment effect of the blocks it forgets, through the sink's own rollback, then deletes the cursor
and the identity so the next backfill starts over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from cardpay.errors import CardpayError
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.metrics import ListenerMetrics
from cardpay.postgres.chain_identity import ChainIdentity, PostgresChainIdentities
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.runtime.supervise import Backoff, supervise
from cardpay.settings import Settings
from listener.errors import ListenerError, ReorgTooDeep, RpcError, RpcTransportError
from listener.poller import Listener, RangeResult
from listener.ports import BlockRef, RpcClient
from listener.presets import ChainConfig
from listener.rpc import BATCH_SIZE, HttpJsonRpc

log = logging.getLogger(__name__)

RESET_WINDOW = 256
"""The sink's kept window (blocks); the listener's reorg depth limit."""
RESET_CHUNK = 5_000
"""Blocks handed to one rollback by a reset (each is a bind parameter of the sink's queries)."""


async def run_listener(listener: Listener, *, stop: asyncio.Event, poll_interval: float,
                       metrics: ListenerMetrics | None = None,
                       backoff: Backoff | None = None) -> None:
    """Index as the chain grows until `stop`, on the one supervision loop: a failed range (node
    down, database away, a stale cursor) is retried with backoff and never skipped; a reorg
    deeper than the kept window ends the loop (it needs a person: `cardpay listener reset`)."""

    async def step() -> int:
        return 0 if await asyncio.to_thread(listener.run_once) is None else 1

    await supervise(step, component=f"listener:{listener.name}", stop=stop,
                    backoff=backoff or Backoff(initial=poll_interval, maximum=30.0,
                                               jitter=poll_interval),
                    fatal=(ReorgTooDeep,), idle_sleep=poll_interval,
                    errors=metrics.errors if metrics is not None else None)


class NodeUnreachable(CardpayError):
    """The RPC URL does not answer as an EVM JSON-RPC node."""


class WrongChain(CardpayError):
    """The node is on another chain than the preset or the listener's stored identity."""


class ResetRefused(CardpayError):
    """A reset that would leave blocks unindexed."""


@dataclass(frozen=True)
class ResetReport:
    from_block: int
    blocks: int
    retracted: int


def make_sink(settings: Settings, engine: Engine, chain_id: int, *,
              metrics: ListenerMetrics | None = None,
              window: int = RESET_WINDOW) -> ChainSinkHandler:
    return ChainSinkHandler(unit_of_work_factory(engine, settings.outbox_topic), chain_id=chain_id,
                             window=window,
                             on_quarantine=metrics.log_quarantined if metrics else None)


def build_listener(
    settings: Settings,
    engine: Engine,
    config: ChainConfig,
    *,
    rpc_url: str,
    start_block: int,
    metrics: ListenerMetrics,
    observers: Sequence[Callable[[RangeResult], None]] = (),
    window: int = RESET_WINDOW,
    rpc: RpcClient | None = None,
) -> Listener:
    rpc = rpc or HttpJsonRpc(rpc_url, observer=metrics, batch_size=BATCH_SIZE)
    sink = make_sink(settings, engine, config.chain_id, metrics=metrics, window=window)

    def observe(result: RangeResult) -> None:
        metrics.observe_range(result)
        for observer in observers:
            observer(result)

    return Listener(settings.listener_name, rpc, sink, with_registered_roles_modules(config, engine),
                    start_block=start_block,
                    confirmations=settings.confirmations, max_range=settings.max_block_range,
                    initial_range=min(50, settings.max_block_range), on_range=observe)


def with_registered_roles_modules(config: ChainConfig, engine: Engine) -> ChainConfig:
    """The preset plus the Roles modules of registered cards, so their allowance events are read
    (a card added with a new Roles module is followed from the listener's next start)."""
    with unit_of_work_factory(engine, None)() as uow:
        modules = {card.roles_module for card in uow.cards.all() if card.roles_module}
    if modules <= config.roles_modules:
        return config
    return dataclasses.replace(config, roles_modules=config.roles_modules | modules)


def node_identity(rpc: RpcClient, url: str) -> tuple[int, str]:
    """The node's chain id and genesis block hash; NodeUnreachable if it does not answer as an
    EVM node."""
    try:
        chain_id = int(str(rpc.call("eth_chainId", [])), 16)
        genesis = rpc.call("eth_getBlockByNumber", ["0x0", False])
        genesis_hash = str(genesis["hash"]).lower()
    except (ListenerError, ValueError, TypeError, KeyError) as exc:
        raise NodeUnreachable(
            f"cannot reach the node at {url}: {_why(exc)}; check CARDPAY_RPC_URL / --rpc-url"
        ) from exc
    return chain_id, genesis_hash


_CAUSES = (
    (re.compile(r"refused", re.I), "connection refused"),
    (re.compile(r"Name or service not known|nodename nor servname|getaddrinfo", re.I),
     "unknown host"),
    (re.compile(r"timed? ?out", re.I), "no answer (timeout)"),
    (re.compile(r"HTTP (\d+)"), "HTTP {0}"),
    (re.compile(r"not JSON|not a JSON-RPC response"), "the answer is not JSON-RPC"),
    (re.compile(r"InvalidSchema|MissingSchema|InvalidURL"), "not an http(s) URL"),
)


def _why(exc: Exception) -> str:
    """One short cause for a node that does not answer as an EVM node."""
    if isinstance(exc, RpcError):
        return f"{exc.method} failed ({exc.message[:80]}): not an EVM JSON-RPC node?"
    if not isinstance(exc, RpcTransportError):
        return f"unexpected answer ({type(exc).__name__}: {str(exc)[:80]}): not an EVM node?"
    text = str(exc)
    for pattern, cause in _CAUSES:
        match = pattern.search(text)
        if match:
            return cause.format(*match.groups())
    return text[:120]


def check_chain(rpc: RpcClient, url: str, config: ChainConfig, identities: PostgresChainIdentities,
                name: str, *, first_block: int) -> ChainIdentity:
    """Refuse a node on another chain than the preset's, or than the one this listener indexed;
    record the identity the first time."""
    chain_id, genesis = node_identity(rpc, url)
    if chain_id != config.chain_id:
        raise WrongChain(
            f"the node at {url} is chain {chain_id}, but the {config.name} preset indexes chain "
            f"{config.chain_id}; use the preset for that node (--preset) or a node of chain "
            f"{config.chain_id}")
    stored = identities.load(name)
    if stored is None:
        return identities.record(name, ChainIdentity(chain_id, genesis, first_block))
    if (stored.chain_id, stored.genesis_hash) != (chain_id, genesis):
        raise WrongChain(
            f"listener {name!r} indexed chain {stored.chain_id} with genesis "
            f"{stored.genesis_hash[:12]}…, but the node at {url} is chain {chain_id} with genesis "
            f"{genesis[:12]}… (a new chain); run `cardpay listener reset {name}` to retract the "
            "old chain's payments, then backfill again")
    return stored


def fork_floor(engine: Engine, rpc: RpcClient, chain_id: int, name: str, below: int) -> int:
    """A block from which re-indexing repairs a reorg deeper than the kept window: one above the
    newest indexed block (below `below`) that the node still has, found by binary search (every
    block under a canonical one is canonical), else the first block this listener indexed."""
    identities = PostgresChainIdentities(engine)
    identity = identities.load(name)
    floor = identity.first_block if identity is not None else 0
    blocks = [b for b in identities.indexed_blocks(chain_id, floor) if b.number < below]
    lo, hi, best = 0, len(blocks) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        header = rpc.call("eth_getBlockByNumber", [hex(blocks[mid].number), False])
        if header is not None and str(header["hash"]).lower() == blocks[mid].hash:
            best, lo = blocks[mid].number, mid + 1
        else:
            hi = mid - 1
    return floor if best is None else best + 1


def reset_listener(settings: Settings, engine: Engine, name: str, *,
                   from_block: int | None) -> ResetReport:
    """Retract every payment effect at or above `from_block` (default: all this listener
    indexed) and forget the cursor, kept blocks and chain identity.

    The sink's rollback retracts the effects of the blocks in its kept window only (the newest
    256), so the window is first refilled with every block that holds effects or activity at or
    above `from_block`; blocks are handed over in layers with one hash per number (a number
    can hold a retracted effect of an old branch next to a live one), one rollback each.
    """
    identities = PostgresChainIdentities(engine)
    identity = identities.load(name)
    start = from_block if from_block is not None else \
        (identity.first_block if identity is not None else 0)
    retracted, blocks = 0, []
    at = identities.cursor_block(name)
    if at is not None and start > at + 1:
        raise ResetRefused(f"listener {name!r} is at block {at}; a reset from block {start} would "
                           f"leave blocks {at + 1}..{start - 1} unindexed")
    if at is not None:
        chain_id = identity.chain_id if identity is not None else _only_chain(identities, name)
        sink = make_sink(settings, engine, chain_id)
        blocks = identities.indexed_blocks(chain_id, start)
        ancestor = identities.kept_block(name, start - 1) or BlockRef(start - 1, "0x", "0x")
        for layer in _layers(blocks):
            for chunk in range(0, len(layer), RESET_CHUNK):
                previous = sink.load_cursor(name)
                assert previous is not None
                identities.keep_blocks(name, layer[chunk:chunk + RESET_CHUNK], above=start - 1)
                retracted += sink.rollback(name, ancestor, previous)
    identities.forget_cursor(name)
    identities.forget(name)
    return ResetReport(start, len(blocks), retracted)


def _layers(blocks: list[BlockRef]) -> list[list[BlockRef]]:
    layers: list[list[BlockRef]] = []
    for block in blocks:
        for layer in layers:
            if layer[-1].number != block.number:
                layer.append(block)
                break
        else:
            layers.append([block])
    return layers


def _only_chain(identities: PostgresChainIdentities, name: str) -> int:
    """A cursor written before chain identities were recorded: the one chain it indexed."""
    chains = identities.activity_chain_ids()
    if len(chains) != 1:
        raise WrongChain(f"listener {name!r} has no recorded chain identity and the database "
                         f"holds activity of chains {sorted(chains)}; cannot tell which to reset")
    return chains[0]


__all__ = ["NodeUnreachable", "ResetRefused", "ResetReport", "WrongChain", "build_listener",
           "check_chain", "fork_floor", "reset_listener"]

"""Sending our own transactions: durable nonces, record before broadcast, rebroadcast, replace.

The rule every step keeps: a transaction is signed and RECORDED (sender, nonce, hash, raw bytes,
the effect requests it does) in the database and committed before it is ever broadcast. So:
- a crash after the commit loses nothing: the next poll finds the recorded transaction unknown
  to the node and broadcasts the same raw bytes (same hash: idempotent);
- a crash before the commit leaves nothing signed anywhere: the request is still pending and is
  signed afresh, with a nonce that was never used (the allocation rolled back with it);
- a request that already has a recorded transaction is never signed again (the request rows are
  keyed by request id and attempt, so even a racing duplicate claim fails to commit a second).
A nonce is taken from our own table under a row lock, initialised once from the node's pending
nonce: two workers never get the same one, and a crash never skips one. A replacement (the
transaction was not mined within `stuck_after`) reuses the nonce with higher fees and is recorded
too, before it is broadcast: every hash of one nonce belongs to the same requests, and only one
of them can ever be mined.

The pure parts (ABI encoding of the two calls, fee bumps, what a receipt means) are here with
the ports; the node, the signer and the tables are adapters (`cardpay.onchain`,
`cardpay.postgres.repositories.onchain`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cardpay.errors import CardpayError
from cardpay.handlers.ports import CardRegistry, PaymentReferences
from cardpay.handlers.sagas import EffectRequest, EffectRequests
from listener.translate import payment_id_for_spend
from sagas.engine.model import Json
from sagas.engine.retry import FailureClass

log = logging.getLogger(__name__)

SUBMIT_SPEND = "submit_spend"
SEND_REFUND = "send_refund"
"""The effect names the card-payment saga asks for (sagas.card_payment)."""

SPEND_SELECTOR = "8a320255"
"""spend(address,address,address,uint256,bytes32 roleKey) on the Spender module: mainnet's
call shape (gnosispay/account-kit Spender.sol; gnosis-pay-onchain.md §3)."""
SPENDING_ROLE = "0x349476e3982666749979c85ce800cd2947a4b8dc9fe20a01a00a1b526072a8a3"
"""keccak256("SPENDING_ROLE"): the role the Spender module holds on every cardholder's Roles
module, passed as `roleKey` so the Roles module executes the transfer under it."""
EXEC_TRANSACTION_SELECTOR = "6a761202"
"""execTransaction(address to, uint256 value, bytes data, uint8 operation, uint256 safeTxGas,
uint256 baseGas, uint256 gasPrice, address gasToken, address refundReceiver, bytes signatures)
on a Safe v1.3.0: the settlement account is one (gnosis-pay-onchain.md §1)."""
MULTI_SEND_SELECTOR = "8d80ff0a"
"""multiSend(bytes transactions) on Safe's MultiSend library, run by delegatecall."""
TRANSFER_SELECTOR = "a9059cbb"
"""transfer(address,uint256) on an ERC-20 token."""
MULTI_SEND = "0xa238cbeb142c10ef7ad8442c6d1f9e89e07e7761"
"""Safe v1.3.0's MultiSend at its canonical address, the one Gnosis Pay's refund batches go
through on mainnet (gnosis-pay-onchain.md, the recorded batch of 45 refunds); the local replicas
put it at the same address."""
DELEGATECALL = 1
"""A Safe transaction's `operation`: 0 call, 1 delegatecall (MultiSend has to be delegatecalled
so that its calls come from the Safe)."""
SAFE_TRANSFER_FAILED = " (Safe GS013: a transfer of the batch failed, the settlement account " \
    "may be short of the token)"
"""What a Safe's GS013 means for a refund batch: MultiSend's call failed, no reason given."""


def spend_link(chain_payment_id: str) -> str:
    """The payment reference under which a spend transaction's chain-derived payment id
    (`payment_id_for_spend`) names the authorization's payment."""
    return f"spend:{chain_payment_id}"


# -- errors ------------------------------------------------------------------------------------
class OnchainError(CardpayError):
    """Sending a transaction failed."""


class NodeUnavailable(OnchainError):
    """The node did not answer (down, timeout): nothing is decided, the next poll tries again."""


class CallReverted(OnchainError):
    """The node says the call reverts (on an estimate, or replayed after a reverted receipt)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the call reverts: {reason}")


class TransactionRejected(OnchainError):
    """The node refused a signed transaction for a reason other than knowing it already."""


# -- values ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fees in wei per gas (a node without base fees: both are its gas price)."""

    max_fee: int
    priority_fee: int

    def bumped(self, at_least: Fees) -> Fees:
        """Fees for a replacement: at least 12.5 % above these (nodes want 10 % on both, and
        round down), and no lower than what the node asks now."""
        return Fees(max(self.max_fee * 9 // 8 + 1, at_least.max_fee),
                    max(self.priority_fee * 9 // 8 + 1, at_least.priority_fee))


@dataclass(frozen=True, slots=True)
class RequestRef:
    """One try of one effect request (a retry is a new attempt: it may be sent again)."""

    request_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Call:
    """What a transaction does: `data` is the ABI-encoded call, hex without 0x."""

    to: str
    data: str


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx_hash: str
    raw: bytes
    sender: str
    nonce: int
    gas: int
    fees: Fees
    signed_at: datetime

    def __repr__(self) -> str:  # the raw bytes are long and say nothing to a reader
        return f"SignedTx({self.tx_hash}, nonce={self.nonce}, sender={self.sender})"


@dataclass(frozen=True, slots=True)
class Slot:
    """One nonce of one sender and what it is for: every transaction signed with that nonce
    (the first and its replacements) makes this call for these requests."""

    sender: str
    nonce: int
    purpose: str
    call: Call
    gas: int
    requests: tuple[RequestRef, ...]
    meta: Json = field(default_factory=dict)
    txs: tuple[SignedTx, ...] = ()
    """Oldest first; the last is the newest replacement."""


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    succeeded: bool
    block_number: int


# -- ports -------------------------------------------------------------------------------------
class Node(Protocol):
    """The chain node, as the sender needs it. Raises NodeUnavailable when it does not answer."""

    def chain_id(self) -> int: ...

    def nonce(self, address: str, *, pending: bool) -> int: ...

    def fees(self) -> Fees: ...

    def estimate_gas(self, sender: str, call: Call) -> int:
        """Raises CallReverted when the call would revert now."""
        ...

    def send_raw(self, raw: bytes) -> None:
        """Broadcast; a transaction the node knows or has mined already is not an error.
        Raises TransactionRejected for any other refusal."""
        ...

    def receipt(self, tx_hash: str) -> Receipt | None: ...

    def knows(self, tx_hash: str) -> bool:
        """Whether the node has the transaction (in its pool or mined)."""
        ...

    def revert_reason(self, tx_hash: str, sender: str, call: Call, gas: int,
                      block_number: int) -> str:
        """Why the mined transaction reverted (traced, or its call replayed on the parent)."""
        ...


class Signer(Protocol):
    """Holds one private key; never shows it."""

    @property
    def address(self) -> str:
        """Lowercase hex."""
        ...

    def sign(self, *, chain_id: int, nonce: int, call: Call, gas: int, fees: Fees,
             signed_at: datetime) -> SignedTx: ...


class OutgoingTransactions(Protocol):
    """Our signed transactions, by sender and nonce (repository)."""

    def claim_unsent(self, names: Sequence[str], limit: int) -> list[EffectRequest]:
        """`EffectRequests.claim` without the requests whose try has a recorded transaction
        already (those are followed, not sent): requests in flight never fill the claim's
        window and starve new ones. Oldest first, locked, skipped by other workers."""
        ...

    def recorded(self, refs: Sequence[RequestRef]) -> set[RequestRef]:
        """Those of `refs` that have a recorded transaction already."""
        ...

    def take_nonce(self, sender: str, initial: Callable[[], int]) -> int:
        """The sender's next nonce, locked until the end of the transaction (`initial()` the
        first time: the node's pending nonce)."""
        ...

    def record(self, slot: Slot) -> None:
        """A new slot with its first transaction and its requests (a request already recorded
        is a conflict: the transaction fails)."""
        ...

    def add_replacement(self, tx: SignedTx) -> None: ...

    def in_flight(self, sender: str, purposes: Sequence[str]) -> list[Slot]:
        """Slots not settled yet, lowest nonce first."""
        ...

    def same_spend(self, purpose: str, payment_id: str, amount: int) -> tuple[str, int] | None:
        """(sender, nonce) of a slot that sends this very spend (same payment, same amount)
        and has not failed: in flight, or mined and succeeded."""
        ...

    def add_requests(self, sender: str, nonce: int, requests: Sequence[RequestRef]) -> None:
        """The slot does these requests too (and is followed again until mined)."""
        ...

    def reopen_from(self, sender: str, nonce: int) -> list[int]:
        """Follow again every settled slot of `sender` at or above `nonce` (a reorg took their
        transactions back: the chain's nonce is below them). Returns their nonces."""
        ...

    def reopen_unanswered(self, sender: str) -> list[int]:
        """Follow again every settled slot of `sender` one of whose requests waits for an answer
        again: a saga re-drive asks anew under the request's first id after the relayer had
        already had the transaction mined again and answered (a reorg seen by the relayer
        first); the request is recorded, so it is never signed again, and only following its
        slot answers it. Returns their nonces."""
        ...

    def settle(self, sender: str, nonce: int, *, mined_hash: str | None, outcome: str) -> None:
        """The slot is done: `mined` or `reverted` with `mined_hash`; `lost`: its nonce went
        to a transaction we did not record."""
        ...


class OnchainUnitOfWork(Protocol):
    @property
    def effects(self) -> EffectRequests: ...

    @property
    def transactions(self) -> OutgoingTransactions: ...

    @property
    def references(self) -> PaymentReferences: ...

    @property
    def cards(self) -> CardRegistry: ...

    def lock(self, key: str) -> None: ...

    def commit(self) -> None: ...

    def __enter__(self) -> OnchainUnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...


class EffectAnswers(Protocol):
    """Where answers go: `SagaRunner.effect_done`."""

    def effect_done(self, request_id: str, *, succeeded: bool, result: Json | None = None,
                    failure: FailureClass = FailureClass.TEMPORARY, detail: str = "") -> bool:
        ...


OnRecord = Callable[[OnchainUnitOfWork, Slot, SignedTx], None]
"""Called in the unit of work that records a transaction (the first or a replacement), before
it is broadcast: the spend relayer links the hash to its payment there."""


# -- ABI ---------------------------------------------------------------------------------------
def _word(value: int) -> str:
    if not 0 <= value < 2**256:
        raise ValueError(f"{value} does not fit in a uint256")
    return format(value, "064x")


def _address(address: str) -> str:
    body = address.lower().removeprefix("0x")
    if len(body) != 40 or any(ch not in "0123456789abcdef" for ch in body):
        raise ValueError(f"{address!r} is not an address")
    return body.rjust(64, "0")


def _bytes32(value: str) -> str:
    body = value.lower().removeprefix("0x")
    if len(body) != 64 or any(ch not in "0123456789abcdef" for ch in body):
        raise ValueError(f"{value!r} is not 32 bytes")
    return body


def encode_spend(asset: str, account: str, receiver: str, amount: int, role_key: str) -> str:
    """SpenderModule.spend(asset, account = the Safe's Roles module, receiver, amount,
    roleKey): the 5-argument call mainnet's Spender module takes (selector 0x8a320255), with no
    appended salt or signature — on a fork the sender is an enabled module of the Spender
    module (impersonated), which passes Zodiac's `moduleOnly` without one."""
    return SPEND_SELECTOR + _address(asset) + _address(account) + _address(receiver) + \
        _word(amount) + _bytes32(role_key)


def _dynamic(data: str) -> str:
    """ABI `bytes`: its length in bytes, then the bytes padded to whole words."""
    return _word(len(data) // 2) + data.ljust(-(-len(data) // 64) * 64, "0")


def encode_multi_send(token: str, legs: Sequence[tuple[str, int]]) -> str:
    """MultiSend.multiSend(transactions): one `token.transfer(to, amount)` per leg, each packed
    as operation (1 byte, 0 = call), to (20), value (32), data length (32), data."""
    transfer_to = "00" + _address(token)[24:] + _word(0) + _word(68) + TRANSFER_SELECTOR
    packed = "".join(transfer_to + _address(to) + _word(amount) for to, amount in legs)
    return MULTI_SEND_SELECTOR + _word(32) + _dynamic(packed)


def encode_refund_batch(token: str, legs: Sequence[tuple[str, int]], signers: Sequence[str], *,
                        multi_send: str = MULTI_SEND) -> str:
    """The settlement Safe's `execTransaction`: a delegatecall to MultiSend with one transfer
    per leg, no gas refund (safeTxGas, baseGas, gasPrice 0: a failing transfer reverts the
    whole transaction), signed in Safe's "approved" form (r = the owner, s = 0, v = 1, in
    ascending order of owner): the owner who sends the transaction needs no more, the others
    must have called `approveHash`. cardpay sends as the one signer a Safe of threshold 1 needs,
    so its call does not depend on the Safe's nonce."""
    data = encode_multi_send(token, legs)
    owners = sorted({_address(signer) for signer in signers})
    if not owners:
        raise ValueError("a Safe transaction needs at least one signer")
    signatures = "".join(owner + _word(0) + "01" for owner in owners)
    data_offset = 10 * 32
    signatures_offset = data_offset + len(_dynamic(data)) // 2
    return (EXEC_TRANSACTION_SELECTOR + _address(multi_send) + _word(0) + _word(data_offset)
            + _word(DELEGATECALL) + _word(0) + _word(0) + _word(0) + _word(0) + _word(0)
            + _word(signatures_offset) + _dynamic(data) + _dynamic(signatures))


# -- the sender --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Settled:
    """A slot whose transaction is mined (or whose nonce was lost), to be answered."""

    slot: Slot
    tx_hash: str | None
    succeeded: bool
    reason: str = ""


class TransactionSender:
    """Signs, records and broadcasts one sender's transactions and follows them until mined."""

    def __init__(self, node: Node, signer: Signer, *, clock: Callable[[], datetime],
                 stuck_after: timedelta, gas_margin: float = 1.25,
                 on_record: OnRecord | None = None) -> None:
        self._node = node
        self._signer = signer
        self._clock = clock
        self._stuck_after = stuck_after
        self._gas_margin = gas_margin
        self._on_record = on_record
        self._chain_id: int | None = None
        self._batch_fees: Fees | None = None
        self._held_since: dict[tuple[int, str], datetime] = {}
        """(nonce, newest hash) of a slot held back because it would revert: since when."""

    def new_batch(self) -> None:
        """The fees are asked of the node once per batch of transactions signed together."""
        self._batch_fees = None

    @property
    def address(self) -> str:
        return self._signer.address

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self._node.chain_id()
        return self._chain_id

    def sign_and_record(self, uow: OnchainUnitOfWork, purpose: str, call: Call,
                        requests: Sequence[RequestRef], meta: Json | None = None) -> SignedTx:
        """Estimate (CallReverted if it would revert: nothing recorded), take a nonce, sign and
        record, in the caller's unit of work; the caller commits, then `broadcast`s."""
        sender = self._signer.address
        gas = int(self._node.estimate_gas(sender, call) * self._gas_margin)
        if self._batch_fees is None:
            self._batch_fees = self._node.fees()
        fees = self._batch_fees
        nonce = uow.transactions.take_nonce(
            sender, lambda: self._node.nonce(sender, pending=True))
        tx = self._signer.sign(chain_id=self.chain_id(), nonce=nonce, call=call, gas=gas,
                               fees=fees, signed_at=self._clock())
        slot = Slot(sender, nonce, purpose, call, gas, tuple(requests), dict(meta or {}), (tx,))
        uow.transactions.record(slot)
        if self._on_record is not None:
            self._on_record(uow, slot, tx)
        log.info("signed %s nonce %d for %s: %s", purpose, nonce,
                 ", ".join(r.request_id for r in requests), tx.tx_hash)
        return tx

    def broadcast(self, txs: Sequence[SignedTx]) -> int:
        """Send recorded transactions; those the node refuses stay recorded (the next poll sees
        them unknown to the node and tries again). NodeUnavailable propagates."""
        sent = 0
        for tx in txs:
            try:
                self._node.send_raw(tx.raw)
                sent += 1
            except TransactionRejected as exc:
                log.warning("node refused %s (nonce %d): %s", tx.tx_hash, tx.nonce, exc)
        return sent

    def follow(self, uow_factory: Callable[[], OnchainUnitOfWork],
               purposes: Sequence[str]) -> list[Settled]:
        """Check every in-flight slot: mined ones are returned (to be answered, then
        `settle`d); a dropped one is broadcast again; a stuck one is replaced (recorded first).
        Under a per-sender lock, so two workers never replace the same slot at once.

        The sender's mined nonce is read once: a slot below it has a receipt to find, a slot at
        or above it is not mined (no receipt is asked for), so a poll costs one call per slot
        waiting in the pool instead of three. A settled slot at or above it was mined on a
        chain a reorg replaced: it is followed again (its transaction is broadcast again, or
        replaced), so the nonce carries the same call once more and no later nonce waits
        behind a gap."""
        sender = self._signer.address
        settled: list[Settled] = []
        to_send: list[SignedTx] = []
        with uow_factory() as uow:
            uow.lock(f"onchain-follow:{sender}")
            mined_below = self._node.nonce(sender, pending=False)
            reorged = uow.transactions.reopen_from(sender, mined_below)
            if reorged:
                log.warning("%s: nonces %s were mined and are not any more (a reorg): "
                            "followed again", sender, reorged)
            asked_again = uow.transactions.reopen_unanswered(sender)
            if asked_again:
                log.info("%s: nonces %s were settled and are asked for again (a re-drive): "
                         "followed again to answer", sender, asked_again)
            slots = uow.transactions.in_flight(sender, purposes)
            for slot in slots:
                newest = slot.txs[-1]
                stuck = self._clock() - newest.signed_at >= self._stuck_after
                if slot.nonce < mined_below:
                    done = self._outcome(slot, stuck=stuck)
                    if done is not None:
                        settled.append(done)
                    continue
                unknown = not stuck and not self._node.knows(newest.tx_hash)
                if (stuck or unknown) and self._held(slot):
                    continue
                if stuck:
                    to_send.append(self._replace(uow, slot))
                elif unknown:
                    log.warning("%s (nonce %d) is unknown to the node: broadcast again",
                                newest.tx_hash, slot.nonce)
                    to_send.append(newest)
            uow.commit()
        self.broadcast(to_send)
        return settled

    def _held(self, slot: Slot) -> bool:
        """Whether a slot about to be broadcast again (dropped, or taken back by a reorg) or
        replaced waits instead, because its call would revert now. After a reorg the chain can
        lack, for a while, what the call rests on: the settlement account's tokens come from
        spends the same reorg took away, which the relayer (another sender) sends again. Sent
        before them, a refund would be mined reverted: a failure for good of a call that
        passes a few seconds later. So it waits, for at most `stuck_after` from the first
        time it was held (in this process), then goes out whatever the estimate says (a nonce
        held for ever would hold every later one of the sender)."""
        key = (slot.nonce, slot.txs[-1].tx_hash)
        try:
            self._node.estimate_gas(slot.sender, slot.call)
        except CallReverted as exc:
            since = self._held_since.setdefault(key, self._clock())
            if self._clock() - since < self._stuck_after:
                log.warning("%s nonce %d would revert now (%s): held, not sent again yet",
                            slot.purpose, slot.nonce, exc.reason)
                return True
            log.warning("%s nonce %d would still revert (%s) after %s: sent anyway",
                        slot.purpose, slot.nonce, exc.reason, self._stuck_after)
        self._held_since.pop(key, None)
        return False

    def settle(self, uow_factory: Callable[[], OnchainUnitOfWork], done: Settled) -> None:
        with uow_factory() as uow:
            outcome = "lost" if done.tx_hash is None else \
                "mined" if done.succeeded else "reverted"
            uow.transactions.settle(done.slot.sender, done.slot.nonce, mined_hash=done.tx_hash,
                                    outcome=outcome)
            uow.commit()

    def _outcome(self, slot: Slot, *, stuck: bool) -> Settled | None:
        """A slot whose nonce is used on chain: its mined transaction, or (no receipt for any of
        its hashes for as long as a stuck transaction waits: not a lagging node) a nonce lost to
        a transaction we did not record."""
        found = self._mined(slot)
        if found is None:
            if not stuck:
                return None
            return Settled(slot, None, False,
                           f"nonce {slot.nonce} of {slot.sender} was used by a transaction we "
                           "did not record: nothing was sent")
        if found.succeeded:
            return Settled(slot, found.tx_hash, True)
        reason = self._node.revert_reason(found.tx_hash, slot.sender, slot.call, slot.gas,
                                          found.block_number)
        return Settled(slot, found.tx_hash, False, reason)

    def _mined(self, slot: Slot) -> Receipt | None:
        for tx in reversed(slot.txs):
            receipt = self._node.receipt(tx.tx_hash)
            if receipt is not None:
                return receipt
        return None

    def _replace(self, uow: OnchainUnitOfWork, slot: Slot) -> SignedTx:
        newest = slot.txs[-1]
        fees = newest.fees.bumped(self._node.fees())
        tx = self._signer.sign(chain_id=self.chain_id(), nonce=slot.nonce, call=slot.call,
                               gas=slot.gas, fees=fees, signed_at=self._clock())
        uow.transactions.add_replacement(tx)
        if self._on_record is not None:
            self._on_record(uow, slot, tx)
        log.warning("%s (nonce %d) not mined after %s: replaced by %s with fees %d/%d",
                    newest.tx_hash, slot.nonce, self._stuck_after, tx.tx_hash, fees.max_fee,
                    fees.priority_fee)
        return tx


# -- the two adapters' loops -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainTargets:
    """Where the calls go: the Spender module, the settlement account, and per currency code
    the token address spends and refunds use (EURe: its v1 frontend, as on mainnet)."""

    spender_module: str
    settlement_account: str
    tokens: Mapping[str, tuple[str, int]]
    """Currency code → (address, decimals)."""
    multi_send: str = MULTI_SEND
    """The MultiSend library the settlement Safe's refund batches delegatecall."""

    def token(self, currency: str, decimals: int) -> str:
        found = self.tokens.get(currency)
        if found is None:
            raise ValueError(f"no token configured for {currency}")
        if found[1] != decimals:
            raise ValueError(f"{currency} has {found[1]} decimals on chain, the request says "
                             f"{decimals}")
        return found[0]


@dataclass(frozen=True, slots=True)
class _Refused:
    request: EffectRequest
    reason: str
    failure: FailureClass = FailureClass.HARD


class _EffectWorker:
    """Claim requests, sign and record them, commit, broadcast; then follow what is in flight
    and answer what is mined. `run_once` returns how much it did (0: idle)."""

    names: tuple[str, ...] = ()

    def __init__(self, uow_factory: Callable[[], OnchainUnitOfWork], sender: TransactionSender,
                 answers: EffectAnswers, targets: ChainTargets, *, batch: int = 50) -> None:
        self._uow = uow_factory
        self._sender = sender
        self._answers = answers
        self._targets = targets
        self._batch = batch

    def run_once(self) -> int:
        try:
            return self._submit() + self._answer_mined()
        except NodeUnavailable as exc:
            log.warning("%s: node unavailable, nothing answered: %s", type(self).__name__, exc)
            return 0

    def _submit(self) -> int:
        refused: list[_Refused] = []
        signed: list[SignedTx] = []
        self._sender.new_batch()
        with self._uow() as uow:
            claimed = uow.transactions.claim_unsent(self.names, self._batch)
            known = uow.transactions.recorded([RequestRef(r.request_id, r.attempt)
                                               for r in claimed])
            fresh = [r for r in claimed if RequestRef(r.request_id, r.attempt) not in known]
            if fresh:
                signed, refused = self._sign(uow, fresh)
            uow.commit()
        self._sender.broadcast(signed)
        for item in refused:
            log.warning("%s %s refused before sending: %s", item.request.name,
                        item.request.request_id, item.reason)
            self._answers.effect_done(item.request.request_id, succeeded=False,
                                      failure=item.failure, detail=item.reason)
        return len(signed) + len(refused)

    def _sign(self, uow: OnchainUnitOfWork, requests: Sequence[EffectRequest]
              ) -> tuple[list[SignedTx], list[_Refused]]:
        raise NotImplementedError

    def _answer_mined(self) -> int:
        """Answer every settled slot's requests, then mark it settled (a crash in between
        answers again: a duplicate answer changes nothing). An answer the saga side cannot take
        (its reaction fails) is logged and tried again next poll; it does not hold up the
        others."""
        answered = 0
        for done in self._sender.follow(self._uow, self.names):
            try:
                for ref in done.slot.requests:
                    self._answer(ref.request_id, done)
            except Exception:
                log.exception("%s: answering nonce %d failed; tried again next poll",
                              type(self).__name__, done.slot.nonce)
                continue
            self._sender.settle(self._uow, done)
            answered += 1
        return answered

    def _answer(self, request_id: str, done: Settled) -> None:
        if done.succeeded:
            self._answers.effect_done(request_id, succeeded=True,
                                      result={"tx_hash": done.tx_hash})
        elif done.tx_hash is None:  # nothing happened on chain: may be tried again
            self._answers.effect_done(request_id, succeeded=False,
                                      failure=FailureClass.TEMPORARY, detail=done.reason)
        else:
            self._answers.effect_done(
                request_id, succeeded=False, failure=FailureClass.HARD,
                detail=f"transaction {done.tx_hash} reverted: {done.reason}")


class SpendRelayer(_EffectWorker):
    """Executes `submit_spend`: SpenderModule.spend from the Safe's Roles module to the
    settlement account, signed by the relayer. Every hash it signs (replacements too) is linked
    to the authorization's payment before it is broadcast, so the listener confirms the spend on
    that payment (`ChainSinkHandler`)."""

    names = (SUBMIT_SPEND,)

    def _sign(self, uow: OnchainUnitOfWork, requests: Sequence[EffectRequest]
              ) -> tuple[list[SignedTx], list[_Refused]]:
        modules = _roles_modules(uow.cards)
        signed: list[SignedTx] = []
        refused: list[_Refused] = []
        for request in requests:
            ref = RequestRef(request.request_id, request.attempt)
            same = _same_spend(uow.transactions, request.payload)
            if same is not None:
                # the saga asks again for a spend that is in flight or was mined (a re-drive
                # after a reorg took it back): its nonce is followed again, no second spend
                log.warning("spend of %s is nonce %d already: %s follows it",
                            request.payload.get("payment_id"), same[1], request.request_id)
                uow.transactions.add_requests(same[0], same[1], [ref])
                continue
            try:
                call = self._call(request.payload, modules)
                signed.append(self._sender.sign_and_record(
                    uow, SUBMIT_SPEND, call, [ref],
                    {"payment_id": str(request.payload["payment_id"]),
                     "amount": int(request.payload["amount"])}))
            except (ValueError, KeyError, TypeError) as exc:
                refused.append(_Refused(request, f"cannot spend: {exc}"))
            except CallReverted as exc:
                refused.append(_Refused(request, f"the spend would revert: {exc.reason}"))
            except TransactionRejected as exc:  # left pending: tried again next poll
                log.warning("spend %s not signed: %s", request.request_id, exc)
        return signed, refused

    def _call(self, payload: Json, modules: Mapping[tuple[str, str], str]) -> Call:
        safe = str(payload["safe"]).lower()
        amount = int(payload["amount"])
        if amount <= 0:
            raise ValueError(f"amount {amount} is not positive")
        currency = str(payload["currency"])
        token = self._targets.token(currency, int(payload["decimals"]))
        module = modules.get((safe, currency))
        if module is None:
            raise ValueError(f"no registered {currency} card with a Roles module for Safe {safe}")
        return Call(self._targets.spender_module,
                    encode_spend(token, module, self._targets.settlement_account, amount,
                                 SPENDING_ROLE))


def link_spend(uow: OnchainUnitOfWork, slot: Slot, tx: SignedTx, *, chain_id: int) -> None:
    """`OnRecord` of the spend relayer: the chain-derived payment id of this hash's Spend log
    names the authorization's payment."""
    payment_id = slot.meta.get("payment_id")
    if payment_id:
        uow.references.put(spend_link(payment_id_for_spend(chain_id, tx.tx_hash, 0)),
                           str(payment_id))


def _same_spend(transactions: OutgoingTransactions, payload: Json) -> tuple[str, int] | None:
    try:
        return transactions.same_spend(SUBMIT_SPEND, str(payload["payment_id"]),
                                       int(payload["amount"]))
    except (KeyError, TypeError, ValueError):
        return None  # a malformed request is refused when its call is built


def _roles_modules(cards: CardRegistry) -> dict[tuple[str, str], str]:
    return {(card.safe.lower(), card.currency.code): card.roles_module.lower()
            for card in cards.all() if card.roles_module}


class RefundSender(_EffectWorker):
    """Executes `send_refund`: the pending refunds of one token go out in one transaction of
    the settlement Safe (`execTransaction` → MultiSend, one transfer each), sent by one of its
    owners; each request is answered with the batch's mined hash."""

    names = (SEND_REFUND,)

    def _sign(self, uow: OnchainUnitOfWork, requests: Sequence[EffectRequest]
              ) -> tuple[list[SignedTx], list[_Refused]]:
        refused: list[_Refused] = []
        groups: dict[str, list[tuple[EffectRequest, str, int]]] = {}
        for request in requests:
            p = request.payload
            try:
                token = self._targets.token(str(p["currency"]), int(p["decimals"]))
                to = str(p.get("to") or "")
                _address(to)
                amount = int(p["amount"])
                if amount <= 0:
                    raise ValueError(f"amount {amount} is not positive")
            except (ValueError, KeyError, TypeError) as exc:
                refused.append(_Refused(request, f"cannot refund: {exc}"))
                continue
            groups.setdefault(token, []).append((request, to, amount))
        signed: list[SignedTx] = []
        for token, legs in groups.items():
            call = Call(self._targets.settlement_account,
                        encode_refund_batch(token, [(to, amount) for _, to, amount in legs],
                                            [self._sender.address],
                                            multi_send=self._targets.multi_send))
            refs = [RequestRef(r.request_id, r.attempt) for r, _, _ in legs]
            try:
                signed.append(self._sender.sign_and_record(uow, SEND_REFUND, call, refs))
            except CallReverted as exc:
                # nothing was signed: the settlement account may be short for now (a reorg
                # took the spends that fund it away; they are sent again), so tried again
                reason = exc.reason + (SAFE_TRANSFER_FAILED if "GS013" in exc.reason else "")
                refused.extend(_Refused(r, f"the refund batch would revert: {reason}",
                                        FailureClass.SOFT) for r, _, _ in legs)
            except TransactionRejected as exc:  # left pending: tried again next poll
                log.warning("refund batch of %d not signed: %s", len(legs), exc)
        return signed, refused


"""The ledger in PostgreSQL: the pure rules of `domain.ledger.decide` on rows locked for them.

For a batch, `create_transfers` locks every account it touches (in id order, so two writers
never wait for each other in a circle), reads the transfers it names, lets `decide` compute the
results exactly as the in-memory ledger would, and writes the new transfers and the journal
entries in one statement each (one JSON array per column: one bind parameter per column whatever
the batch size, so PostgreSQL's 65,535-parameter limit never applies; slices of `SLICE` journals
bound the statement's size). The balances are not written here: a trigger on the entries keeps them, and the
database refuses an unbalanced journal, an account outside its flags, or a pending transfer
resolved twice (migration 0007), so a bug here cannot break the books either.

Concurrency: under READ COMMITTED, the transfers are read after the account locks are held, so a
writer that waited sees what the one before it committed. A pending transfer's accounts never
change, so locking them serializes everything that can resolve it (post, void, expiry).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from cardpay.errors import ConcurrencyConflict
from domain.ledger.decide import Decision, decide, decide_expiry
from domain.ledger.memory import check_new_account
from domain.ledger.model import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    PendingStatus,
    Transfer,
    TransferFlags,
    TransferRecord,
)

SLICE = 10_000
"""Transfers (or entries) per INSERT statement."""

_RESOLVING = TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING
_ACCOUNT_COLUMNS = ("id, ledger, code, flags, debits_pending, debits_posted, credits_pending, "
                    "credits_posted")
_TRANSFER_COLUMNS = ("id, debit_account_id, credit_account_id, amount, ledger, code, flags, "
                     "pending_id, timeout, user_data, created_at, expires_at, pending_status")

_LOCK_ACCOUNTS = text(f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts "
                      "WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR UPDATE")
_READ_ACCOUNTS = text(f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts "
                      "WHERE id = ANY(CAST(:ids AS text[]))")
_READ_TRANSFERS = text(f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers "
                       "WHERE id = ANY(CAST(:ids AS text[]))")
_PENDING_ACCOUNTS = text("SELECT debit_account_id, credit_account_id FROM ledger_transfers "
                         "WHERE id = ANY(CAST(:ids AS text[]))")
_INSERT_ACCOUNTS = text(
    "INSERT INTO ledger_accounts (id, ledger, code, flags) "
    "SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:ledgers AS text[]), "
    "CAST(:codes AS text[]), CAST(:flags AS integer[])) "
    "ON CONFLICT (id) DO NOTHING RETURNING id")
# The rows go in as one JSON array per column, zipped by ROWS FROM: json.dumps is C and exact for
# big ints, where psycopg's per-element array dumping took longer than the INSERT itself.
_INSERT_TRANSFERS = text(
    f"INSERT INTO ledger_transfers ({_TRANSFER_COLUMNS}) "
    "SELECT i, d, c, a::numeric, l, k, f::integer, p, t::bigint, u, cr::timestamptz, "
    "ex::timestamptz, st FROM ROWS FROM ("
    + ", ".join(f"json_array_elements_text(CAST(:{c} AS json))" for c in (
        "ids", "debits", "credits", "amounts", "ledgers", "codes", "flags", "pending_ids",
        "timeouts", "user_data", "created", "expires", "statuses"))
    + ") AS x(i, d, c, a, l, k, f, p, t, u, cr, ex, st)")
_INSERT_ENTRIES = text(
    "INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_pending, debits_posted, "
    "credits_pending, credits_posted) "
    "SELECT j, a, l, dp::numeric, dpo::numeric, cp::numeric, cpo::numeric FROM ROWS FROM ("
    + ", ".join(f"json_array_elements_text(CAST(:{c} AS json))" for c in (
        "journals", "accounts", "entry_ledgers", "dp", "dpo", "cp", "cpo"))
    + ") AS x(j, a, l, dp, dpo, cp, cpo)")
# A batch that fits one slice is written in one round trip (the triggers of both tables still run).
_INSERT_BOTH = text(f"WITH t AS ({_INSERT_TRANSFERS.text}) {_INSERT_ENTRIES.text}")
_DUE = text("SELECT id, debit_account_id, credit_account_id FROM ledger_transfers "
            "WHERE pending_status = 'pending' AND expires_at <= :now")
_DUE_OF = text("SELECT id, debit_account_id, credit_account_id FROM ledger_transfers "
               "WHERE pending_status = 'pending' AND expires_at <= :now "
               "AND id = ANY(CAST(:ids AS text[]))")
_EXPIRE = text("UPDATE ledger_transfers SET pending_status = 'expired' "
               "WHERE id = ANY(CAST(:ids AS text[])) AND pending_status = 'pending'")


def _account(row: Any) -> Account:
    return Account(row[0], row[1], row[2], AccountFlags(row[3]), int(row[4]), int(row[5]),
                   int(row[6]), int(row[7]))


def _record(row: Any) -> TransferRecord:
    transfer = Transfer(row[0], row[1], row[2], int(row[3]), row[4], row[5], TransferFlags(row[6]),
                        row[7] or "", int(row[8]), row[9])
    return TransferRecord(transfer, row[10], row[11],
                          PendingStatus(row[12]) if row[12] is not None else None)


def _json_columns(columns: dict[str, list[Any]]) -> dict[str, str]:
    return {name: json.dumps(values) for name, values in columns.items()}


def _slices(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), SLICE):
        yield items[start:start + SLICE]


class PostgresLedger:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # -- accounts -----------------------------------------------------------------------------
    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        """TigerBeetle's create_accounts: OK, EXISTS (same fields), or why not."""
        known = {a.id: a for a in self.lookup_accounts([a.id for a in accounts])}
        results: list[CreateAccountResult] = []
        new: dict[str, Account] = {}
        for account in accounts:
            result = check_new_account(account, known.get(account.id) or new.get(account.id))
            if result is CreateAccountResult.OK:
                new[account.id] = account
            results.append(result)
        if new:
            rows = list(new.values())
            inserted = set(self._conn.execute(_INSERT_ACCOUNTS, {
                "ids": [a.id for a in rows], "ledgers": [a.ledger for a in rows],
                "codes": [a.code for a in rows], "flags": [int(a.flags) for a in rows],
            }).scalars())
            if len(inserted) < len(new):  # another writer created some of them meanwhile
                return self._recheck(accounts, results, inserted)
        return results

    def _recheck(self, accounts: Sequence[Account], results: list[CreateAccountResult],
                 inserted: set[str]) -> list[CreateAccountResult]:
        known = {a.id: a for a in self.lookup_accounts([a.id for a in accounts])}
        return [check_new_account(a, known.get(a.id))
                if r is CreateAccountResult.OK and a.id not in inserted else r
                for a, r in zip(accounts, results, strict=True)]

    def lookup_accounts(self, ids: Sequence[str]) -> list[Account]:
        """The accounts that exist, in the order asked."""
        found = {r[0]: _account(r) for r in self._conn.execute(_READ_ACCOUNTS,
                                                                {"ids": list(ids)})}
        return [found[i] for i in ids if i in found]

    # -- transfers ----------------------------------------------------------------------------
    def create_transfers(self, batch: Sequence[Transfer],
                         now: datetime) -> list[CreateTransferResult]:
        """Apply the batch at `now`; one result per transfer, in order."""
        if not batch:
            return []
        pending_ids = list({t.pending_id for t in batch if t.flags & _RESOLVING and t.pending_id})
        account_ids = {i for t in batch for i in (t.debit_account_id, t.credit_account_id) if i}
        if pending_ids:
            for debit, credit in self._conn.execute(_PENDING_ACCOUNTS, {"ids": pending_ids}):
                account_ids.update((debit, credit))
        accounts = self._lock_accounts(account_ids)
        wanted = list({t.id for t in batch if t.id}.union(pending_ids))
        transfers = self._read_transfers(wanted)
        missing = {i for r in transfers.values() for i in (r.transfer.debit_account_id,
                                                           r.transfer.credit_account_id)
                   if i not in accounts}
        if missing:  # a pending transfer committed after we looked: lock its accounts too
            accounts.update(self._lock_accounts(missing))
            transfers = self._read_transfers(wanted)
        decision = decide(batch, now, accounts, transfers)
        self._write(decision)
        return decision.results

    def _lock_accounts(self, ids: Iterable[str]) -> dict[str, Account]:
        rows = self._conn.execute(_LOCK_ACCOUNTS, {"ids": sorted(ids)})
        return {r[0]: _account(r) for r in rows}

    def _read_transfers(self, ids: list[str]) -> dict[str, TransferRecord]:
        return {r[0]: _record(r) for r in self._conn.execute(_READ_TRANSFERS, {"ids": ids})}

    def _write(self, decision: Decision) -> None:
        try:
            if 0 < len(decision.created) <= SLICE and len(decision.entries) <= SLICE:
                self._conn.execute(_INSERT_BOTH, {**self._transfer_columns(decision.created),
                                                  **self._entry_columns(decision.entries)})
                return
            for part in _slices(decision.created):
                self._conn.execute(_INSERT_TRANSFERS, self._transfer_columns(part))
        except IntegrityError as exc:
            # Same id inserted by a concurrent batch on other accounts: decide again.
            raise ConcurrencyConflict(f"ledger transfer inserted concurrently: {exc.orig}") from exc
        for entries in _slices(decision.entries):
            self._conn.execute(_INSERT_ENTRIES, self._entry_columns(entries))

    @staticmethod
    def _transfer_columns(records: Sequence[TransferRecord]) -> dict[str, str]:
        ts = [r.transfer for r in records]
        return _json_columns({
            "ids": [t.id for t in ts], "debits": [t.debit_account_id for t in ts],
            "credits": [t.credit_account_id for t in ts], "amounts": [t.amount for t in ts],
            "ledgers": [t.ledger for t in ts], "codes": [t.code for t in ts],
            "flags": [int(t.flags) for t in ts], "pending_ids": [t.pending_id or None for t in ts],
            "timeouts": [t.timeout for t in ts], "user_data": [t.user_data for t in ts],
            "created": [r.timestamp.isoformat() for r in records],
            "expires": [r.expires_at.isoformat() if r.expires_at else None for r in records],
            "statuses": [r.status.value if r.status else None for r in records],
        })

    @staticmethod
    def _entry_columns(entries: Sequence[Entry]) -> dict[str, str]:
        return _json_columns({
            "journals": [e.journal_id for e in entries],
            "accounts": [e.account_id for e in entries],
            "entry_ledgers": [e.ledger for e in entries],
            "dp": [e.debits_pending for e in entries], "dpo": [e.debits_posted for e in entries],
            "cp": [e.credits_pending for e in entries], "cpo": [e.credits_posted for e in entries],
        })

    def lookup_transfers(self, ids: Sequence[str]) -> list[TransferRecord]:
        """The transfers that exist, in the order asked, with a pending one's status."""
        found = self._read_transfers(list(ids))
        return [found[i] for i in ids if i in found]

    def expire_pending(self, now: datetime, ids: Sequence[str] | None = None) -> list[str]:
        """Release every pending transfer whose timeout has passed at `now` (only those of
        `ids`, when given); their ids, sorted."""
        due = self._conn.execute(_DUE, {"now": now}).all() if ids is None else \
            self._conn.execute(_DUE_OF, {"now": now, "ids": list(ids)}).all()
        if not due:
            return []
        accounts = self._lock_accounts({i for r in due for i in (r[1], r[2])})
        fresh = self._read_transfers([r[0] for r in due])  # after the locks: still pending?
        decision = decide_expiry(list(fresh.values()), now, accounts)
        expired = sorted(decision.resolved)
        for part in _slices(expired):
            self._conn.execute(_EXPIRE, {"ids": list(part)})
        for entries in _slices(decision.entries):
            self._conn.execute(_INSERT_ENTRIES, self._entry_columns(entries))
        return expired

"""The ledger in PostgreSQL: the pure rules of `domain.ledger.decide` on rows locked for them.

For a batch, `create_transfers` locks the flagged accounts it touches (in id order, so two
writers never wait for each other in a circle) and the pending transfers it resolves, reads the
transfers it names and the unflagged accounts, lets `decide` compute the results exactly as the
in-memory ledger would, and writes the new transfers and the journal entries in one statement
(one JSON array per column: one bind parameter per column whatever the batch size, so
PostgreSQL's 65,535-parameter limit never applies; slices of `SLICE` journals bound the
statement's size). The balances are not written here: a trigger on the entries keeps them, and
the database refuses an unbalanced journal, an account outside its flags, or a pending transfer
resolved twice (migrations 0007, 0011), so a bug here cannot break the books either.

Accounts without limit flags (network payable, suspense, fees...) are not locked: nothing here
depends on their balance but the u128 overflow checks, and their balances are kept in shard rows
(ADR 0011), so every authorization of a ledger does not queue on its one `network_payable` row.
What serializes the resolution of a pending transfer is the lock of its flagged account, or,
when it has none, the lock of the pending transfer's own row.

Speed (ADR 0011, docs/benchmarks.md): the statements run on the driver's connection (psycopg,
inside the Connection's transaction) and the reads are sent as one pipeline, with the BEGIN: one
round trip to load, one to write. Under READ COMMITTED, each statement of a pipeline takes its
snapshot when the one before it has finished, so the transfers are read after the locks are held
and a writer that waited sees what the one before it committed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.numeric import IntLoader
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from cardpay.errors import ConcurrencyConflict
from cardpay.postgres import raw
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


def _any(param: str) -> str:
    """`= ANY` of a JSON array parameter's text elements: json.dumps is C, faster than psycopg's
    array dumping, and the array (an InitPlan) still lets the planner use the primary key."""
    return f"= ANY(ARRAY(SELECT json_array_elements_text(%({param})s::json)))"


# The accounts a batch touches (those it names, and those of the pending transfers it resolves):
# the flagged ones locked in id order (their latest version, after any wait), then the unflagged
# ones with their balances summed, unlocked. One statement; the CTE runs first (Append order).
_TOUCHED_ACCOUNTS = (
    "WITH touched AS MATERIALIZED (SELECT json_array_elements_text(%(ids)s::json) AS id "
    "UNION SELECT unnest(ARRAY[debit_account_id, credit_account_id]) FROM ledger_transfers "
    f"WHERE id {_any('pending')}), "
    f"locked AS (SELECT {_ACCOUNT_COLUMNS} FROM ledger_account_rows "
    "WHERE id = ANY(ARRAY(SELECT id FROM touched)) AND flags <> 0 ORDER BY id FOR UPDATE) "
    f"SELECT {_ACCOUNT_COLUMNS} FROM locked UNION ALL SELECT {_ACCOUNT_COLUMNS} "
    "FROM ledger_accounts WHERE id = ANY(ARRAY(SELECT id FROM touched)) AND flags = 0")
_READ_ACCOUNTS = f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id {_any('ids')}"
_LOCK_TRANSFERS = (f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers "
                   f"WHERE id {_any('ids')} ORDER BY id FOR UPDATE")
_READ_TRANSFERS = f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers WHERE id {_any('ids')}"
_INSERT_ACCOUNTS = (
    "INSERT INTO ledger_account_rows (id, ledger, code, flags) "
    "SELECT i, l, c, f::integer FROM ROWS FROM (json_array_elements_text(%(ids)s::json), "
    "json_array_elements_text(%(ledgers)s::json), json_array_elements_text(%(codes)s::json), "
    "json_array_elements_text(%(flags)s::json)) AS x(i, l, c, f) "
    "ON CONFLICT (id) DO NOTHING RETURNING id")
# The rows go in as one JSON array per column, zipped by ROWS FROM: json.dumps is C and exact for
# big ints, where psycopg's per-element array dumping took longer than the INSERT itself.
_INSERT_TRANSFERS = (
    f"INSERT INTO ledger_transfers ({_TRANSFER_COLUMNS}) "
    "SELECT i, d, c, a::numeric, l, k, f::integer, p, t::bigint, u, cr::timestamptz, "
    "ex::timestamptz, st FROM ROWS FROM ("
    + ", ".join(f"json_array_elements_text(%({c})s::json)" for c in (
        "ids", "debits", "credits", "amounts", "ledgers", "codes", "flags", "pending_ids",
        "timeouts", "user_data", "created", "expires", "statuses"))
    + ") AS x(i, d, c, a, l, k, f, p, t, u, cr, ex, st)")
_INSERT_ENTRIES = (
    "INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_pending, debits_posted, "
    "credits_pending, credits_posted) "
    "SELECT j, a, l, dp::numeric, dpo::numeric, cp::numeric, cpo::numeric FROM ROWS FROM ("
    + ", ".join(f"json_array_elements_text(%({c})s::json)" for c in (
        "journals", "accounts", "entry_ledgers", "dp", "dpo", "cp", "cpo"))
    + ") AS x(j, a, l, dp, dpo, cp, cpo)")
# A batch that fits one slice is written in one round trip (the triggers of both tables still run).
_INSERT_BOTH = f"WITH t AS ({_INSERT_TRANSFERS}) {_INSERT_ENTRIES}"
_DUE = ("SELECT id FROM ledger_transfers WHERE pending_status = 'pending' "
        "AND expires_at <= %(now)s")
_DUE_OF = _DUE + f" AND id {_any('ids')}"
# The due transfers are locked after their accounts (the order create_transfers takes them in)
# by id alone, and checked again by decide_expiry: with "pending and due" in the WHERE, the planner
# may scan the partial index of every pending transfer and test each against the id array.
_EXPIRE = f"UPDATE ledger_transfers SET pending_status = 'expired' WHERE id {_any('ids')}"


def _account(row: Any) -> Account:
    return Account(row[0], row[1], row[2], AccountFlags(row[3]), row[4], row[5], row[6], row[7])


def _record(row: Any) -> TransferRecord:
    transfer = Transfer(row[0], row[1], row[2], row[3], row[4], row[5], TransferFlags(row[6]),
                        row[7] or "", row[8], row[9])
    return TransferRecord(transfer, row[10], row[11],
                          PendingStatus(row[12]) if row[12] is not None else None)


def _guarded(pending: Transfer, locked: Mapping[str, Account]) -> bool:
    """One of the pending transfer's accounts is flagged, so locked: that lock serializes
    everything that can resolve it."""
    return any(locked[i].flags for i in (pending.debit_account_id, pending.credit_account_id)
               if i in locked)


def _json_columns(columns: dict[str, list[Any]]) -> dict[str, str]:
    return {name: json.dumps(values) for name, values in columns.items()}


def _slices(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), SLICE):
        yield items[start:start + SLICE]


class PostgresLedger:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # -- the driver -----------------------------------------------------------------------------
    @staticmethod
    def _cursor(cursor: psycopg.Cursor[Any]) -> None:
        cursor.adapters.register_loader("numeric", IntLoader)  # whole numbers: ints, not Decimal

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        cursor = raw.execute(self._conn, sql, params, configure=self._cursor)
        return cursor.fetchall() if cursor.description else []

    def _pipeline(self, *statements: tuple[str, Mapping[str, Any]]) -> list[list[Any]]:
        """Run the statements in order in one round trip (after what was deferred on the
        connection, e.g. the unit of work's locks); the rows of each."""
        return [c.fetchall() for c in raw.pipeline(self._conn, *statements,
                                                  configure=self._cursor)]

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
            inserted = {r[0] for r in self._rows(_INSERT_ACCOUNTS, _json_columns({
                "ids": [a.id for a in rows], "ledgers": [a.ledger for a in rows],
                "codes": [a.code for a in rows], "flags": [int(a.flags) for a in rows],
            }))}
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
        """The accounts that exist, in the order asked (balances summed over their shards)."""
        found = {r[0]: _account(r) for r in self._rows(_READ_ACCOUNTS,
                                                        {"ids": json.dumps(list(ids))})}
        return [found[i] for i in ids if i in found]

    # -- transfers ----------------------------------------------------------------------------
    def create_transfers(self, batch: Sequence[Transfer],
                         now: datetime) -> list[CreateTransferResult]:
        """Apply the batch at `now`; one result per transfer, in order."""
        if not batch:
            return []
        pending_ids = sorted({t.pending_id for t in batch
                              if t.flags & _RESOLVING and t.pending_id})
        account_ids = sorted({i for t in batch for i in (t.debit_account_id, t.credit_account_id)
                              if i})
        named = sorted({t.id for t in batch if t.id}.union(pending_ids))
        accounts, transfers = self._load(account_ids, pending_ids, named)
        missing = {i for r in transfers.values() for i in (r.transfer.debit_account_id,
                                                           r.transfer.credit_account_id)
                   if i not in accounts}
        if missing:  # a pending transfer committed after the accounts were chosen: again
            more, transfers = self._load(sorted(missing), pending_ids, named)
            accounts.update(more)
        decision = decide(batch, now, accounts, transfers)
        self._write(decision)
        return decision.results

    def _load(self, account_ids: list[str], pending_ids: list[str], named: list[str],
              ) -> tuple[dict[str, Account], dict[str, TransferRecord]]:
        """Lock the flagged accounts and read the unflagged ones, then read the transfers: one
        pipeline, in that order. A pending transfer is resolved under its flagged account's
        lock; one between two unflagged accounts has its own row locked (a second round trip,
        rare: e.g. a stand-in hold from suspense)."""
        touched = {"ids": json.dumps(account_ids), "pending": json.dumps(pending_ids)}
        found, read = self._pipeline((_TOUCHED_ACCOUNTS, touched),
                                     (_READ_TRANSFERS, {"ids": json.dumps(named)}))
        accounts = {r[0]: _account(r) for r in found}
        transfers = {r[0]: _record(r) for r in read}
        unguarded = [i for i in pending_ids if i in transfers
                     and not _guarded(transfers[i].transfer, accounts)]
        if unguarded:
            transfers.update((r[0], _record(r)) for r in self._rows(
                _LOCK_TRANSFERS, {"ids": json.dumps(unguarded)}))
        return accounts, transfers

    def _write(self, decision: Decision) -> None:
        try:
            if 0 < len(decision.created) <= SLICE and len(decision.entries) <= SLICE:
                self._rows(_INSERT_BOTH, {**self._transfer_columns(decision.created),
                                          **self._entry_columns(decision.entries)})
                return
            for part in _slices(decision.created):
                self._rows(_INSERT_TRANSFERS, self._transfer_columns(part))
        except DBAPIError as exc:
            if isinstance(exc.orig, psycopg.IntegrityError):
                # Same id inserted by a concurrent batch on other accounts: decide again.
                raise ConcurrencyConflict(
                    f"ledger transfer inserted concurrently: {exc.orig}") from exc
            raise
        for entries in _slices(decision.entries):
            self._rows(_INSERT_ENTRIES, self._entry_columns(entries))

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
        found = {r[0]: _record(r) for r in self._rows(_READ_TRANSFERS,
                                                       {"ids": json.dumps(list(ids))})}
        return [found[i] for i in ids if i in found]

    def expire_pending(self, now: datetime, ids: Sequence[str] | None = None) -> list[str]:
        """Release every pending transfer whose timeout has passed at `now` (only those of
        `ids`, when given); their ids, sorted."""
        due = self._rows(_DUE, {"now": now}) if ids is None else \
            self._rows(_DUE_OF, {"now": now, "ids": json.dumps(list(ids))})
        if not due:
            return []
        due_ids = json.dumps(sorted(r[0] for r in due))
        touched = {"ids": "[]", "pending": due_ids}
        found, fresh = self._pipeline((_TOUCHED_ACCOUNTS, touched),
                                      (_LOCK_TRANSFERS, {"ids": due_ids}))
        accounts = {r[0]: _account(r) for r in found}
        decision = decide_expiry([_record(r) for r in fresh], now, accounts)
        expired = sorted(decision.resolved)
        for part in _slices(expired):
            self._rows(_EXPIRE, {"ids": json.dumps(list(part))})
        for entries in _slices(decision.entries):
            self._rows(_INSERT_ENTRIES, self._entry_columns(entries))
        return expired

"""The finance web page: settlements by day and currency, a settlement day's reconciliation with
its breaks, and the exceptions queue with a resolve form — HTML rendered on the server.

Why server-rendered with the standard library (`html.escape`): finance opens it in any browser,
there is no build step to keep working, no script runs in the page and nothing is fetched from
another origin, so the Content-Security-Policy can forbid all of it (`default-src 'none'`; the
one inline style sheet is allowed by its hash).

Sign-in: `/finance/login` takes a bearer token (from the token store: `scopes_of` answers its
scopes, None when it is unknown or revoked) and keeps it in a cookie that scripts cannot read
(HttpOnly), that no other site's page sends (SameSite=Strict) and that only `/finance` sees. Every
request asks `scopes_of` again, so a revoked token stops working at once. Reading the page needs
`finance:read`; the queue needs `ops:read`; resolving needs `ops:write` and the form's CSRF token,
an HMAC of the session's token under a secret of this router, checked in constant time (with the
strict cookie, a second lock: a form posted from anywhere else carries no valid one).

Everything the page shows comes from the callables given to `finance_page_router` (no globals):
the same records the CLI prints (`cardpay.records`) and the same reconciliation
(`cardpay.handlers.reconciliation.reconcile_day`), so the page and `cardpay settlements` /
`cardpay reconcile` cannot disagree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cardpay.handlers.exceptions import ExceptionOutcome
from cardpay.records import amount_text
from domain.reconciliation import Reconciliation

ScopesOf = Callable[[str], frozenset[str] | None]
Records = Callable[[], list[dict[str, Any]]]
Reconcile = Callable[[date], list[Reconciliation]]
Resolve = Callable[[int, str], ExceptionOutcome]

FINANCE_READ, OPS_READ, OPS_WRITE = "finance:read", "ops:read", "ops:write"
COOKIE = "cardpay_finance"
PREFIX = "/finance"
LOGIN = f"{PREFIX}/login"
MAX_FORM_BYTES = 16 * 1024
"""A login or resolve form is a token and a note; anything larger is refused unread."""
MAX_TOKEN_CHARS = 512
MAX_NOTE_CHARS = 2000

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fde8e8}
.notice{background:#e8f4fd;padding:.4rem .6rem}
.error{background:#fde8e8;padding:.4rem .6rem}
header{display:flex;gap:1rem;align-items:baseline}
textarea{width:18rem;height:2.5rem}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""On every answer: nothing but the page's own style and forms, never framed, never cached (it
shows money and a CSRF token)."""


def finance_page_router(*, scopes_of: ScopesOf, settlements: Records, reconcile: Reconcile,
                        exceptions: Records, resolve: Resolve,
                        csrf_secret: bytes | None = None) -> APIRouter:
    """The page's routes under `/finance` (left out of the OpenAPI document: they answer HTML
    to a person, not JSON to a program).

    `settlements()` gives `cardpay.records.settlement_record`s, `exceptions()` the open
    exceptions as `cardpay.records.quarantine_records`, `reconcile(day)` one reconciliation per
    currency of the day, `resolve(id, note)` closes an exception; each is called in a worker
    thread. `csrf_secret` keys the forms' CSRF tokens; None: a random one, so forms rendered
    before a restart are refused (and shown again) after it."""
    secret = csrf_secret if csrf_secret is not None else secrets.token_bytes(32)
    router = APIRouter(include_in_schema=False)

    def csrf(token: str) -> str:
        return hmac.new(secret, b"finance-csrf:" + token.encode(), hashlib.sha256).hexdigest()

    async def session(request: Request, needed: str) -> tuple[str, frozenset[str]] | Response:
        """The session's token and scopes, or the answer: to the sign-in page without a
        known token, 403 naming `needed` when the token lacks it."""
        token = request.cookies.get(COOKIE)
        scopes = None
        if token and _plausible(token):
            scopes = await run_in_threadpool(scopes_of, token)
        if token is None or scopes is None:
            return _redirect(LOGIN)
        if needed not in scopes:
            return _forbidden(needed)
        return token, scopes

    @router.get(LOGIN)
    async def login_form() -> Response:
        return _page("Sign in", _login_form(None))

    @router.post(LOGIN)
    async def login(request: Request) -> Response:
        form = await _form(request)
        if isinstance(form, Response):
            return form
        token = form.get("token", "").strip()
        if not _plausible(token) or await run_in_threadpool(scopes_of, token) is None:
            return _page("Sign in", _login_form("That token is unknown or revoked."), 401)
        answer = _redirect(PREFIX)
        answer.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                          secure=request.url.scheme == "https")
        return answer

    @router.post(f"{PREFIX}/logout")
    async def logout() -> Response:
        """Forgets the cookie (no CSRF token: signing someone out is no harm worth one)."""
        answer = _redirect(LOGIN)
        answer.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return answer

    @router.get(PREFIX)
    async def finance(request: Request) -> Response:
        who = await session(request, FINANCE_READ)
        if isinstance(who, Response):
            return who
        token, scopes = who
        rows = await run_in_threadpool(settlements)
        asked = request.query_params.get("day")
        if asked:
            try:
                day: date | None = date.fromisoformat(asked)
            except ValueError:
                return _page("Bad day", _error(f"day must be YYYY-MM-DD, got {asked!r}") +
                             _back(), 400)
        else:
            day = max((date.fromisoformat(r["day"]) for r in rows), default=None)
        found = [] if day is None else await run_in_threadpool(reconcile, day)
        queue = await run_in_threadpool(exceptions) if OPS_READ in scopes else None
        notice = request.query_params.get("resolved", "")
        body = (_header(scopes) +
                (_notice(f"Exception {notice} resolved.") if notice.isdigit() else "") +
                _settlements(rows) + _reconciliation(day, found, rows) +
                _exceptions(queue, csrf(token) if OPS_WRITE in scopes else None))
        return _page("Finance", body)

    @router.post(PREFIX + "/exceptions/{item_id}/resolve")
    async def resolve_exception(item_id: int, request: Request) -> Response:
        who = await session(request, OPS_WRITE)
        if isinstance(who, Response):
            return who
        token = who[0]
        form = await _form(request)
        if isinstance(form, Response):
            return form
        if not hmac.compare_digest(form.get("csrf", ""), csrf(token)):
            return _page("Refused", _error("The form's CSRF token does not match this "
                                           "session: open the page again and resubmit.") +
                         _back(), 403)
        note = form.get("note", "").strip()
        if not note or len(note) > MAX_NOTE_CHARS:
            return _page("Note needed", _error(
                f"Say what was done (1 to {MAX_NOTE_CHARS} characters).") + _back(), 400)
        outcome = await run_in_threadpool(resolve, item_id, note)
        if outcome.outcome != "resolved":
            status = 404 if outcome.outcome == "not_found" else 409
            return _page("Not resolved", _error(f"Exception {item_id}: {outcome.message}") +
                         _back(), status)
        return _redirect(f"{PREFIX}?{urlencode({'resolved': item_id})}#exceptions")

    return router


# -- requests -------------------------------------------------------------------------------------
def _plausible(token: str) -> bool:
    """A token worth asking the store about: printable ASCII without spaces, bounded."""
    return 0 < len(token) <= MAX_TOKEN_CHARS and token.isascii() and token.isprintable() \
        and " " not in token


async def _form(request: Request) -> dict[str, str] | Response:
    """A urlencoded form's fields (the first value of each), or the answer refusing it: a form
    from another site (its Origin names another host), not urlencoded, or too large."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        return _page("Refused", _error("This form was posted from another site."), 403)
    if request.headers.get("content-type", "").split(";")[0].strip() != \
            "application/x-www-form-urlencoded":
        return _page("Refused", _error("Expected a form."), 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _page("Refused", _error("The form is too large."), 413)
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                      max_num_fields=16)
    return {name: values[0] for name, values in fields.items()}


# -- answers --------------------------------------------------------------------------------------
def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)} · cardpay</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _redirect(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303, headers=HEADERS)


def _forbidden(scope: str) -> HTMLResponse:
    return _page("Forbidden", f'<h1>Forbidden</h1><p class="error" id="missing-scope">'
                 f"This token lacks the scope <code>{escape(scope)}</code>.</p>"
                 f'<p><a href="{LOGIN}">Sign in with another token</a></p>', 403)


def _error(text: str) -> str:
    return f'<p class="error" id="error">{escape(text)}</p>'


def _notice(text: str) -> str:
    return f'<p class="notice" id="notice">{escape(text)}</p>'


def _back() -> str:
    return f'<p><a href="{PREFIX}">Back to the finance page</a></p>'


def _login_form(problem: str | None) -> str:
    return ("<h1>cardpay finance</h1>" + (_error(problem) if problem else "") +
            f'<form method="post" action="{LOGIN}"><label>API token '
            '<input type="password" name="token" id="token" autocomplete="off" required>'
            '</label> <button type="submit" id="sign-in">Sign in</button></form>'
            "<p>A token from <code>cardpay tokens create --scope finance:read</code> "
            "(add <code>ops:read</code> and <code>ops:write</code> for the exceptions).</p>")


# -- sections -------------------------------------------------------------------------------------
def _header(scopes: frozenset[str]) -> str:
    return ("<header><h1>cardpay finance</h1>"
            f'<span id="scopes">scopes: {escape(" ".join(sorted(scopes)))}</span>'
            f'<form method="post" action="{PREFIX}/logout">'
            '<button type="submit" id="sign-out">Sign out</button></form></header>')


def _cell(value: Any, *, field: str, numeric: bool = False) -> str:
    shown = "-" if value is None else str(value)
    return (f'<td data-field="{escape(field)}"{" class=n" if numeric else ""}>'
            f"{escape(shown)}</td>")


def _table(headings: Sequence[str], rows: Iterable[str], *, table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    return f'<table id="{escape(table_id)}"><thead><tr>{head}</tr></thead><tbody>' + \
        "".join(rows) + "</tbody></table>"


SETTLEMENT_AMOUNTS = ("credit", "debit", "net")
SETTLEMENT_FIELDS = (
    ("count", "count"), ("credit", "credit"), ("debit", "debit"), ("net", "net"),
    ("report_id", "report"), ("report_count", "report count"),
    ("report_credit", "report credit"), ("report_debit", "report debit"),
    ("report_net", "report net"), ("report_fees", "fees"), ("diff_count", "diff count"),
    ("diff_credit", "diff credit"), ("diff_debit", "diff debit"), ("diff_net", "diff net"))
"""The columns after day, currency, status and payments: ours, the report's, the difference
(ours minus the report's), as `cardpay settlements` prints them."""


def settlement_cells(record: Mapping[str, Any]) -> dict[str, str]:
    """What the page shows of one settlement record, per field: amounts as decimals of the
    currency (the tests compare the page with this, computed from the same records)."""
    out = {"day": record["day"], "currency": record["currency"], "status": record["status"],
           "payments": str(record["payments"])}
    for key, _ in SETTLEMENT_FIELDS:
        value = record[key]
        money = key.removeprefix("report_").removeprefix("diff_") in SETTLEMENT_AMOUNTS or \
            key == "report_fees"
        out[key] = amount_text(value, record["decimals"]) if money else (
            "-" if value is None else str(value))
    return out


def _settlements(rows: list[dict[str, Any]]) -> str:
    heading = '<section id="settlements"><h2>Settlements</h2>'
    if not rows:
        return heading + "<p>(no settlement batches yet)</p></section>"
    body = []
    for record in rows:
        cells = settlement_cells(record)
        bad = record["status"] == "mismatched" or any(
            record[f"diff_{k}"] not in (None, 0, "0") for k in ("count", *SETTLEMENT_AMOUNTS))
        row_id = f"settlement-{record['day']}-{record['currency']}"
        body.append(f'<tr id="{escape(row_id)}"{" class=bad" if bad else ""}>' + "".join(
            _cell(cells[k], field=k, numeric=k not in ("day", "currency", "status", "report_id"))
            for k in ("day", "currency", "status", "payments",
                      *(key for key, _ in SETTLEMENT_FIELDS))) + "</tr>")
    headings = ["day", "currency", "status", "payments", *(h for _, h in SETTLEMENT_FIELDS)]
    return heading + "<p>Amounts in the currency (ours, the network report's interchange " \
        "line, and ours minus the report's).</p>" + \
        _table(headings, body, table_id="settlement-table") + "</section>"


def reconciliation_figures(r: Reconciliation) -> list[tuple[str, str, str]]:
    """The figures of each side as the page shows them: (key, label, text), amounts in the
    token's units as decimals."""
    n = r.network

    def amount(units: int) -> str:
        return amount_text(units, r.decimals)

    out = [("chain-spent", "chain: spent", amount(r.chain.spent)),
           ("chain-refunded", "chain: refunded", amount(r.chain.refunded)),
           ("chain-unmatched_out", "chain: out, matching no payment",
            amount(r.chain.unmatched_out)),
           ("chain-net", "chain: net", amount(r.chain.net)),
           ("ledger-onchain", "ledger: on-chain transfers", amount(r.ledger.onchain)),
           ("ledger-payable", "ledger: posted to network payable", amount(r.ledger.payable)),
           ("network-batch", "network: our batch", n.batch_status or "(no batch)"),
           ("network-count", "network: our count", str(n.ours.count)),
           ("network-net", "network: our net", amount(n.ours.net))]
    if n.report is None:
        out.append(("report", "report", "(no report)"))
    else:
        out += [("report-id", "report", n.report_id or "-"),
                ("report-count", "report: count", str(n.report.count)),
                ("report-net", "report: net", amount(n.report.net)),
                ("report-fees", "report: fees", amount(n.fees))]
    return out


def _reconciliation(day: date | None, found: list[Reconciliation],
                    rows: list[dict[str, Any]]) -> str:
    days = sorted({r["day"] for r in rows}, reverse=True)
    links = " ".join(f'<a href="{PREFIX}?day={escape(d)}">{escape(d)}</a>' for d in days)
    picker = (f'<form method="get" action="{PREFIX}"><label>Day <input type="date" name="day" '
              f'id="day" value="{escape(day.isoformat()) if day else ""}" required></label> '
              f'<button type="submit" id="show-day">Show</button></form>'
              + (f"<p>Batch days: {links}</p>" if links else ""))
    out = '<section id="reconciliation"><h2>Reconciliation</h2>' + picker
    if day is None:
        return out + "<p>(no settlement batch yet: choose a day)</p></section>"
    if not found:
        return out + (f'<p id="reconciliation-empty">(nothing to reconcile on '
                      f"{escape(day.isoformat())})</p></section>")
    for r in found:
        state = "reconciles" if r.clean else f"{len(r.breaks)} break(s)"
        out += (f'<div id="reconciliation-{escape(r.currency)}" '
                f'data-clean="{"true" if r.clean else "false"}">'
                f"<h3>{escape(r.day.isoformat())} {escape(r.currency)} ({escape(r.token)}, "
                f"{len(r.payments)} payments): {escape(state)}</h3>")
        figures = [f'<tr data-figure="{escape(key)}"><td>{escape(label)}</td>'
                   f'{_cell(text, field="value", numeric=True)}</tr>'
                   for key, label, text in reconciliation_figures(r)]
        out += _table(["figure", r.token], figures, table_id=f"figures-{r.currency}")
        if r.breaks:
            breaks = [f'<tr class="bad break" data-kind="{escape(b.kind.value)}">'
                      + _cell(b.kind.value, field="kind")
                      + _cell(amount_text(b.amount, r.decimals), field="amount", numeric=True)
                      + _cell(" ".join(b.payments) or "-", field="payments")
                      + _cell(b.detail, field="detail") + "</tr>" for b in r.breaks]
            out += _table(["break", "amount", "payments", "detail"], breaks,
                          table_id=f"breaks-{r.currency}")
        out += "</div>"
    return out + "</section>"


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else str(value or "-")


def _exceptions(queue: list[dict[str, Any]] | None, csrf: str | None) -> str:
    out = '<section id="exceptions"><h2>Exceptions</h2>'
    if queue is None:
        return out + (f'<p id="exceptions-hidden">The exceptions queue needs the scope '
                      f"<code>{OPS_READ}</code>.</p></section>")
    if not queue:
        return out + '<p id="exceptions-empty">(no open exceptions)</p></section>'
    rows = []
    for item in queue:
        item_id = int(item["id"])
        action = "-" if csrf is None else (
            f'<form method="post" action="{PREFIX}/exceptions/{item_id}/resolve">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            f'<textarea name="note" required maxlength="{MAX_NOTE_CHARS}" '
            f'placeholder="what was done"></textarea> '
            f'<button type="submit">Resolve</button></form>')
        rows.append(f'<tr id="exception-{item_id}">' + _cell(item_id, field="id", numeric=True)
                    + _cell(item["source"], field="source") + _cell(item["key"], field="key")
                    + _cell(item["reason"], field="reason")
                    + _cell(item["attempts"], field="attempts", numeric=True)
                    + _cell(_when(item["created_at"]), field="created_at")
                    + f"<td>{action}</td></tr>")
    note = "" if csrf is not None else \
        f"<p>Resolving needs the scope <code>{OPS_WRITE}</code>.</p>"
    return out + note + _table(["id", "source", "key", "reason", "retries", "quarantined at",
                                "resolve"], rows, table_id="exception-table") + "</section>"

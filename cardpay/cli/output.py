"""Output shared by the read commands: a human table (rich), one JSON document, or CSV.

Callers hand over records (dicts of plain values: str, int, None, datetime) and the columns to
show; amounts go out as strings of base units in JSON and CSV, so nothing is rounded on the way.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Record = Mapping[str, Any]
FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    justify: Literal["left", "right"] = "left"
    render: Callable[[Record], str] | None = None
    """Text of the table cell (default: the value, "-" for None); JSON and CSV use the value."""

    def cell(self, record: Record) -> str:
        if self.render is not None:
            return self.render(record)
        value = record.get(self.key)
        return "-" if value is None else plain(value)


def add_format_options(parser: argparse.ArgumentParser, *, with_csv: bool = True) -> None:
    """`--json` and (with CSV) `--format table|json|csv`; `--json` is `--format json`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", dest="format", action="store_const", const="json",
                       help="print JSON instead of a table (amounts as strings of base units)")
    if with_csv:
        group.add_argument("--format", dest="format", choices=FORMATS,
                           help="table (default, for people), json, or csv (for spreadsheets)")
    parser.set_defaults(format="table")


def plain(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_json(document: Any, out: TextIO | None = None) -> None:
    print(json.dumps(document, indent=2, default=_json_default), file=out or sys.stdout)


def print_csv(columns: Sequence[Column], records: Sequence[Record],
              out: TextIO | None = None) -> None:
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for record in records:
        writer.writerow(["" if record.get(c.key) is None else plain(record[c.key])
                         for c in columns])


def console(out: TextIO | None = None) -> Console:
    """Colours and the terminal's width on a terminal; plain and unwrapped in a pipe or file."""
    out = out or sys.stdout
    tty = out.isatty()
    return Console(file=out, highlight=False, width=None if tty else 1000,
                   color_system="auto" if tty else None)


def print_table(columns: Sequence[Column], records: Sequence[Record], *,
                title: str | None = None, empty: str = "(none)",
                out: TextIO | None = None) -> None:
    con = console(out)
    if title:
        con.print(title, style="bold", markup=False)
    if not records:
        con.print(f"  {empty}", markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for c in columns:
        table.add_column(c.title, justify=c.justify, overflow="fold")
    for record in records:
        table.add_row(*(Text(c.cell(record)) for c in columns))  # Text: no markup in data
    con.print(table)


def emit(fmt: str, columns: Sequence[Column], records: Sequence[Record], *,
         title: str | None = None, empty: str = "(none)", out: TextIO | None = None) -> None:
    """The records in the chosen format (`table`, `json`: a list of objects, `csv`)."""
    if fmt == "json":
        print_json([{c.key: record.get(c.key) for c in columns} for record in records], out)
    elif fmt == "csv":
        print_csv(columns, records, out)
    else:
        print_table(columns, records, title=title, empty=empty, out=out)

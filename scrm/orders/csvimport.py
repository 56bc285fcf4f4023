"""``scrm orders import``: a CSV export from a shop system, validated like the API, all or nothing.

Columns (header row, any order; UTF-8 with or without BOM):

- ``order_id`` (required), ``paid_at`` (required, ISO-8601 with a zone: ``2026-11-30T10:15:00+08:00``)
- ``amount_fen`` (a whole number of fen) or ``amount_yuan`` (yuan with at most 2 decimals: ``129.00``)
- ``external_userid``, ``unionid``, ``mobile``: at least one per row
- optional: ``items`` (a JSON array), ``store_code``, ``link_code``, ``from``, ``source`` (else ``--source``)

Every bad row is reported with its line number and why; when any row is bad nothing is imported.
An order already recorded with the same content is counted as already present (so a re-import
changes nothing); with different content it is a bad row."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from scrm.logs import get_logger
from scrm.orders.models import MobileSource
from scrm.orders.schema import OrderIn
from scrm.orders.service import OrderConflict, put_order

log = get_logger(__name__)

REQUIRED = ("order_id", "paid_at")
COLUMNS = {"order_id", "paid_at", "amount_fen", "amount_yuan", "items", "store_code", "link_code", "from",
           "external_userid", "unionid", "mobile", "source"}


@dataclass(frozen=True)
class RowProblem:
    line: int  # 1 = the header
    reason: str


class ImportRefused(Exception):
    """Nothing was imported; ``problems`` lists every bad row."""

    def __init__(self, problems: list[RowProblem]):
        super().__init__(f"{len(problems)} bad row(s), nothing imported")
        self.problems = problems


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already_present: int = 0  # recorded before with the same content (or twice in this file)
    matched: int = 0  # of the file's orders, those that belong to a known customer
    unmatched: int = 0
    problems: list[RowProblem] = field(default_factory=list)


def _amount(row: dict[str, str]) -> int:
    fen, yuan = (row.get("amount_fen") or "").strip(), (row.get("amount_yuan") or "").strip()
    if fen and yuan:
        raise ValueError("give amount_fen or amount_yuan, not both")
    if fen:
        if not re.fullmatch(r"\d+", fen):
            raise ValueError(f"amount_fen: {fen!r} is not a whole, non-negative number of fen")
        return int(fen)
    if yuan:
        try:
            value = Decimal(yuan)
        except InvalidOperation:
            raise ValueError(f"amount_yuan: {yuan!r} is not a number") from None
        if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
            raise ValueError(f"amount_yuan: {yuan!r} must be non-negative with at most 2 decimals")
        return int(value * 100)
    raise ValueError("the amount is missing: give amount_fen or amount_yuan")


def _order(row: dict[str, str], default_source: str) -> OrderIn:
    data: dict[str, Any] = {k: v for k, v in row.items() if k in COLUMNS - {"amount_fen", "amount_yuan", "items"}}
    data["amount_fen"] = _amount(row)
    data["source"] = (row.get("source") or "").strip() or default_source
    items = (row.get("items") or "").strip()
    if items:
        try:
            data["items"] = json.loads(items)
        except ValueError:
            raise ValueError('items: not valid JSON (give a JSON array, e.g. [{"sku": "A1", "qty": 1}])') from None
    try:
        return OrderIn.model_validate(data)
    except ValidationError as exc:
        reasons = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            reasons.append(f"{'.'.join(str(p) for p in e['loc'])}: {msg}" if e["loc"] else msg)
        raise ValueError("; ".join(reasons)) from None


@dataclass
class ParsedFile:
    orders: list[tuple[int, OrderIn]]
    problems: list[RowProblem]


def parse(data: bytes, *, source: str = "shop") -> ParsedFile:
    """The file's orders with their line numbers, and every row that is not an order."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedFile([], [RowProblem(0, f"the file is not UTF-8 (bad byte at offset {exc.start}): "
                                             "save it as UTF-8 CSV")])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return ParsedFile([], [RowProblem(1, "the file is empty: the first line must name the columns")])
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if "amount_fen" not in header and "amount_yuan" not in header:
        missing.append("amount_fen or amount_yuan")
    if unknown or missing or len(set(header)) != len(header):
        parts = ([f"unknown column(s) {', '.join(map(repr, unknown))}"] if unknown else []) + (
            [f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            ["a column appears twice"] if len(set(header)) != len(header) else [])
        return ParsedFile([], [RowProblem(1, "; ".join(parts) + f" (columns: {', '.join(sorted(COLUMNS))})")])
    orders: list[tuple[int, OrderIn]] = []
    problems: list[RowProblem] = []
    seen: dict[tuple[str, str], tuple[int, OrderIn]] = {}
    end = reader.line_num
    for cells in reader:
        line, end = end + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            problems.append(RowProblem(line, f"{len(cells)} cells, the header has {len(header)}"))
            continue
        try:
            order = _order(dict(zip(header, cells, strict=True)), source)
        except ValueError as exc:
            problems.append(RowProblem(line, str(exc)))
            continue
        key = (order.source, order.order_id)
        if key in seen and seen[key][1] != order:
            problems.append(RowProblem(line, f"order {order.order_id!r} appears on line {seen[key][0]} with "
                                             "different content"))
            continue
        seen.setdefault(key, (line, order))
        orders.append((line, order))
    return ParsedFile(orders, problems)


def import_orders(engine: Engine, data: bytes, *, source: str = "shop",
                  progress: Callable[[int, int], None] = lambda done, total: None) -> ImportReport:
    """Validate the whole file, then record its orders in one transaction; :class:`ImportRefused`
    (nothing imported) when any row is bad, including an order id recorded with other content."""
    parsed = parse(data, source=source)
    if parsed.problems:
        raise ImportRefused(parsed.problems)
    report = ImportReport(rows=len(parsed.orders))
    problems: list[RowProblem] = []
    total = len(parsed.orders)
    with engine.connect() as conn:
        with conn.begin() as tx:
            for done, (line, order) in enumerate(parsed.orders, 1):
                try:
                    out = put_order(conn, order, mobile_source=MobileSource.import_)
                except OrderConflict as exc:
                    problems.append(RowProblem(line, exc.message))
                    continue
                if out.created:
                    report.imported += 1
                else:
                    report.already_present += 1
                if out.matched:
                    report.matched += 1
                else:
                    report.unmatched += 1
                progress(done, total)
            if problems:
                tx.rollback()
                raise ImportRefused(problems)
    log.info("orders_imported", rows=report.rows, imported=report.imported, already_present=report.already_present,
             matched=report.matched, unmatched=report.unmatched)
    return report

"""The store list as CSV: parse a spreadsheet export with an error per bad cell, import it, export it.

Operators and store staff keep the stores in a spreadsheet and save it as CSV. The columns
(header row required, any order, names case-insensitive)::

    code,name,address,city,latitude,longitude,status,staff

- ``code`` and ``name`` are required. A code is 1-20 letters, digits, ``_`` or ``-``
  (:data:`~scrm.stores.models.STORE_CODE_PATTERN`): it travels inside WeCom's 30-character
  ``state`` of the store's QR codes.
- ``latitude``/``longitude``: decimal degrees, both or neither.
- ``status``: ``open`` or ``closed`` (also 营业 / 停业); empty means open for a new store and
  unchanged for an existing one, so re-importing an old sheet never reopens a closed store.
- ``staff``: the store's WeCom userids separated by ``;`` or ``|``.

Text is UTF-8 with or without a BOM (Excel's "CSV UTF-8"); a file that is not valid UTF-8 is read
as GBK/GB18030 (Excel's plain "CSV" on a Chinese Windows) and :attr:`ParseResult.notes` says so.

Parsing never stops at the first problem: every bad cell becomes a :class:`RowError` with the
file line it is on, so a sheet can be fixed in one pass. Importing is all-or-nothing, in one
transaction, and only for a file without errors (the CLI refuses otherwise).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.stores.models import STORE_CODE_PATTERN, Store, StoreStaff, StoreStatus

COLUMNS: tuple[str, ...] = ("code", "name", "address", "city", "latitude", "longitude", "status", "staff")
REQUIRED: tuple[str, ...] = ("code", "name")
ALL_COLUMNS: frozenset[str] = frozenset(COLUMNS)

MAX_LENGTH = {"name": 128, "address": 256, "city": 64}
STATUS_WORDS = {  # what a cell may say → the status stored
    "open": StoreStatus.open, "closed": StoreStatus.closed,
    "营业": StoreStatus.open, "营业中": StoreStatus.open, "停业": StoreStatus.closed, "已停业": StoreStatus.closed,
}
# WeCom userid: 1-64 of letters, digits and _-@. , starting with a letter or digit.
USERID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
STAFF_SEPARATORS = re.compile(r"[;|；｜]")
_CODE_RE = re.compile(STORE_CODE_PATTERN)
_CODE_RULE = ("a store code is 1-20 characters from A-Z, a-z, 0-9, '_' and '-' (no spaces, dots or "
              "Chinese characters), because it travels inside the 30-character `state` of the store's "
              "WeCom QR codes")
_CODE_MAX = 20
# Names people give these columns that are not ours: a hint, not an alias (the header must be exact).
_COLUMN_HINTS = {
    "lat": "latitude", "lng": "longitude", "lon": "longitude", "long": "longitude",
    "store_code": "code", "store": "code", "id": "code", "staffs": "staff", "userid": "staff",
    "userids": "staff", "门店编码": "code", "门店编号": "code", "编码": "code", "门店": "name", "门店名称": "name",
    "名称": "name", "地址": "address", "城市": "city", "纬度": "latitude", "经度": "longitude",
    "状态": "status", "店员": "staff", "员工": "staff",
}
_CHUNK = 500  # bound parameters per IN (...) query


@dataclass
class RowError:
    """A problem in the file: ``line`` is the file line (1 = header), ``column`` the column's name
    (None when it is about the whole row or file)."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}, {self.column}" if self.column else f"line {self.line}"
        return f"{where}: {self.message}"

    def located(self, path: object) -> str:
        """``path:line: column: message``, the form editors and CI logs link."""
        column = f"{self.column}: " if self.column else ""
        return f"{path}:{self.line}: {column}{self.message}"


@dataclass
class StoreRow:
    """One clean store from the file.

    ``status`` None means the cell was empty or the column absent: a new store opens, an existing
    one keeps its status. ``staff`` is sorted and without duplicates. ``columns`` are the columns the
    file had: on import the others are left as they are in the database (a ``code,name`` sheet
    renames stores without touching their staff).
    """

    code: str
    name: str
    address: str = ""
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None
    status: str | None = None
    staff: list[str] = field(default_factory=list)
    line: int = field(default=0, compare=False)
    columns: frozenset[str] = field(default=ALL_COLUMNS, compare=False)


@dataclass
class ParseResult:
    stores: list[StoreRow]
    errors: list[RowError]
    encoding: str  # utf-8, utf-8-sig, gb18030, utf-16 or "text" (given a str)
    notes: list[str] = field(default_factory=list)  # e.g. "read as GBK/GB18030"

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    staff_added: int = 0
    staff_removed: int = 0
    dry_run: bool = False
    # Staff userids not among the synced employees (only checked when employees were synced).
    unknown_staff: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Decoding


class _DecodeError(Exception):
    def __init__(self, error: RowError):
        self.error = error


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode(data: str | bytes) -> tuple[str, str, list[str]]:
    """The file's text, the encoding it was read with, and notes about that (text given as a
    str is taken as it is, without a BOM)."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff"), "text", []
    if data.startswith(b"PK\x03\x04") or data.startswith(b"\xd0\xcf\x11\xe0"):
        raise _DecodeError(RowError(1, None, "this is an Excel workbook, not CSV: in Excel use "
                                             "File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)'"))
    if data.startswith(codecs.BOM_UTF16_LE) or data.startswith(codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16"), "utf-16", ["the file is UTF-16 (Excel 'Unicode Text'); read as UTF-16"]
        except UnicodeDecodeError as exc:
            raise _DecodeError(RowError(1, None, f"the file starts like UTF-16 but is not valid UTF-16 ({exc.reason}); "
                                                 "save it as 'CSV UTF-8'")) from None
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig", []
        except UnicodeDecodeError as exc:
            line = _line_of(data, exc.start + 3)
            raise _DecodeError(RowError(line, None, f"the file says it is UTF-8 (it starts with a BOM) but byte "
                                                    f"0x{data[exc.start + 3]:02x} on this line is not UTF-8; "
                                                    "save it again as 'CSV UTF-8'")) from None
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            line = _line_of(data, utf8_error.start)
            raise _DecodeError(RowError(line, None, f"byte 0x{data[utf8_error.start]:02x} on this line is neither "
                                                    "UTF-8 nor GBK text; save the file as 'CSV UTF-8'")) from None
        line = _line_of(data, utf8_error.start)
        return text, "gb18030", [f"the file is not UTF-8 (first non-UTF-8 byte on line {line}); "
                                 "read it as GBK/GB18030 (Excel's plain 'CSV' on Chinese Windows)"]


# ------------------------------------------------------------------------------------------
# Parsing


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first file line, cells) per CSV record; a quoted cell may span lines."""
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _DecodeError(RowError(start, None, f"not valid CSV: {exc} (a quote that is never closed?)")) from None
        yield start, cells
        start = reader.line_num + 1


def _clean(cell: str) -> str:
    return cell.strip().strip("\u3000\ufeff").strip()


def _column_hint(name: str) -> str:
    target = _COLUMN_HINTS.get(name)
    if target is None:
        close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
        target = close[0] if close else None
    return f" (did you mean '{target}'?)" if target else ""


def _header(cells: list[str], errors: list[RowError]) -> dict[int, str]:
    """Position → known column; problems as line-1 errors."""
    columns: dict[int, str] = {}
    seen: set[str] = set()
    allowed = ",".join(COLUMNS)
    for i, raw in enumerate(cells):
        name = _clean(raw).lower()
        if not name:
            continue  # an unnamed column: fine while empty (checked per row)
        if name in seen:
            errors.append(RowError(1, name, f"column '{name}' appears twice in the header"))
            continue
        seen.add(name)
        if name not in ALL_COLUMNS:
            errors.append(RowError(1, name, f"unknown column '{_clean(raw)}'{_column_hint(name)}; "
                                            f"the columns are {allowed}"))
            continue
        columns[i] = name
    for name in REQUIRED:
        if name not in seen:
            errors.append(RowError(1, name, f"the header has no '{name}' column (required); "
                                            f"the first line must name the columns: {allowed}"))
    has_lat, has_lng = "latitude" in seen, "longitude" in seen
    if has_lat != has_lng:
        missing = "longitude" if has_lat else "latitude"
        errors.append(RowError(1, missing, f"the header has '{'latitude' if has_lat else 'longitude'}' but no "
                                           f"'{missing}' column: give both or neither"))
    return columns


def _code_error(code: str) -> str:
    if not code:
        return f"code is empty: every store needs one ({_CODE_RULE})"
    if re.fullmatch(r"\d+(\.\d+)?[eE]\+\d+", code):
        return (f"'{code}' looks like a number Excel reformatted: format the code column as Text and type the "
                f"code again ({_CODE_RULE})")
    if len(code) > _CODE_MAX:
        return f"'{code}' is {len(code)} characters long; {_CODE_RULE}"
    bad = sorted({ch for ch in code if not re.fullmatch(r"[A-Za-z0-9_-]", ch)}, key=code.index)
    shown = ", ".join("a space" if ch == " " else repr(ch) for ch in bad)
    return f"'{code}' contains {shown}: {_CODE_RULE}"


def _degrees(value: str, column: str, line: int, errors: list[RowError]) -> float | None:
    try:
        number = float(value)
    except ValueError:
        hint = "; use a dot as the decimal separator" if re.fullmatch(r"-?\d+,\d+", value) else ""
        errors.append(RowError(line, column, f"'{value}' is not a number in decimal degrees (e.g. "
                                             f"{'31.2304' if column == 'latitude' else '121.4737'}){hint}"))
        return None
    if not math.isfinite(number):
        errors.append(RowError(line, column, f"'{value}' is not a number in decimal degrees"))
        return None
    return number


def _coordinates(lat_raw: str, lng_raw: str, line: int, errors: list[RowError]) -> tuple[float | None, float | None]:
    if not lat_raw and not lng_raw:
        return None, None
    if not lat_raw or not lng_raw:
        missing, given = ("latitude", "longitude") if not lat_raw else ("longitude", "latitude")
        errors.append(RowError(line, missing, f"{missing} is empty but {given} is set: give both or neither"))
        return None, None
    before = len(errors)
    lat = _degrees(lat_raw, "latitude", line, errors)
    lng = _degrees(lng_raw, "longitude", line, errors)
    if len(errors) > before:
        return None, None
    assert lat is not None and lng is not None
    swapped = abs(lat) <= 180 and abs(lng) <= 90
    hint = "; did you swap latitude and longitude?" if swapped else ""
    if not -90 <= lat <= 90:
        errors.append(RowError(line, "latitude", f"{lat_raw} is not a latitude (-90..90){hint}"))
    if not -180 <= lng <= 180:
        errors.append(RowError(line, "longitude", f"{lng_raw} is not a longitude (-180..180)"))
    if len(errors) > before:
        return None, None
    return lat, lng


def _staff(value: str, line: int, errors: list[RowError]) -> list[str]:
    ids: set[str] = set()
    for part in STAFF_SEPARATORS.split(value):
        userid = _clean(part)
        if not userid:
            continue
        if USERID_PATTERN.fullmatch(userid):
            ids.add(userid)
            continue
        if re.search(r"[\s,，、]", userid):
            message = f"'{userid}' is not one userid: separate staff userids with ';' or '|'"
        else:
            message = (f"'{userid}' is not a WeCom userid (1-64 letters, digits, '_', '-', '@' or '.', "
                       "starting with a letter or digit; the account in WeCom's admin console, not the person's name)")
        errors.append(RowError(line, "staff", message))
    return sorted(ids)


def parse_stores(data: str | bytes) -> ParseResult:
    """Parse a store CSV; every problem becomes a :class:`RowError` and the rest still parses.

    ``stores`` holds the rows without problems; a caller importing should refuse the whole file
    when ``errors`` is not empty (one bad cell usually means the sheet is not what was meant).
    """
    errors: list[RowError] = []
    try:
        text, encoding, notes = decode(data)
    except _DecodeError as exc:
        return ParseResult([], [exc.error], "unknown")

    stores: list[StoreRow] = []
    first_line: dict[str, int] = {}
    records = _records(text)
    try:
        header = next(records, None)
        expected = f"the first line must be the header naming the columns: {','.join(COLUMNS)}"
        if header is None:
            errors.append(RowError(1, None, f"the file is empty: {expected}"))
            return ParseResult([], errors, encoding, notes)
        names = [_clean(c) for c in header[1]]
        if not any(names):
            errors.append(RowError(1, None, f"line 1 is empty: {expected}"))
            return ParseResult([], errors, encoding, notes)
        if not any(n.lower() in ALL_COLUMNS for n in names):
            shown = ",".join(names)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            errors.append(RowError(1, None, f"no header: {expected} (found '{shown}')"))
            return ParseResult([], errors, encoding, notes)
        columns = _header(header[1], errors)
        present = frozenset(columns.values())
        if not all(name in present for name in REQUIRED):
            return ParseResult([], sorted(errors, key=_order), encoding, notes)
        unnamed = {i for i, n in enumerate(names) if not n}
        for line, cells in records:
            if not any(_clean(c) for c in cells):
                continue  # blank line, or a row of empty cells Excel left behind
            row = _row(line, cells, columns, len(names), unnamed, present, first_line, errors)
            if row is not None:
                stores.append(row)
    except _DecodeError as exc:
        errors.append(exc.error)
    return ParseResult(stores, sorted(errors, key=_order), encoding, notes)


def _order(error: RowError) -> tuple[int, int]:
    return error.line, COLUMNS.index(error.column) if error.column in COLUMNS else -1


def _row(line: int, cells: list[str], columns: dict[int, str], width: int, unnamed: set[int],
         present: frozenset[str], first_line: dict[str, int], errors: list[RowError]) -> StoreRow | None:
    before = len(errors)
    values = {name: "" for name in present}
    for i, cell in enumerate(cells):
        value = _clean(cell)
        if i in columns:
            values[columns[i]] = value
        elif value and i >= width:
            errors.append(RowError(line, None, f"this row has {len(cells)} cells but the header has {width} columns "
                                               "(a value with a comma must be in double quotes)"))
            break
        elif value and i in unnamed:
            errors.append(RowError(line, None, f"'{value}' is in column {i + 1}, which has no name in the header"))
        # else: an unknown or repeated column, reported once on line 1

    code = values["code"]
    if not _CODE_RE.fullmatch(code):
        errors.append(RowError(line, "code", _code_error(code)))
    elif code in first_line:
        errors.append(RowError(line, "code", f"store code '{code}' is already on line {first_line[code]}; "
                                             "each store must be on one line"))
    else:
        first_line[code] = line

    if not values["name"]:
        errors.append(RowError(line, "name", "name is empty: every store needs a name"))
    for name, limit in MAX_LENGTH.items():
        value = values.get(name, "")
        if len(value) > limit:
            errors.append(RowError(line, name, f"is {len(value)} characters long; at most {limit}"))

    lat = lng = None
    if "latitude" in present and "longitude" in present:  # one without the other: a line-1 error
        lat, lng = _coordinates(values["latitude"], values["longitude"], line, errors)

    status: str | None = None
    raw_status = values.get("status", "")
    if raw_status:
        status = STATUS_WORDS.get(raw_status.lower())
        if status is None:
            errors.append(RowError(line, "status", f"'{raw_status}' is not a status: use open or closed (营业 / 停业), "
                                                   "or leave it empty (open for a new store, unchanged otherwise)"))
    staff = _staff(values.get("staff", ""), line, errors)

    if len(errors) > before:
        return None
    return StoreRow(code=code, name=values["name"], address=values.get("address", ""), city=values.get("city", ""),
                    latitude=lat, longitude=lng, status=status, staff=staff, line=line, columns=present)


# ------------------------------------------------------------------------------------------
# Import / export


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


_STORE_FIELDS = ("name", "address", "city", "latitude", "longitude", "status")


def _desired(row: StoreRow, current: dict | None) -> dict:
    """The store's fields after the import: the file's columns over what is stored (or defaults)."""
    base = dict(current) if current else {"name": "", "address": "", "city": "", "latitude": None,
                                          "longitude": None, "status": StoreStatus.open}
    base["name"] = row.name
    for name in ("address", "city"):
        if name in row.columns:
            base[name] = getattr(row, name)
    if "latitude" in row.columns and "longitude" in row.columns:
        base["latitude"], base["longitude"] = row.latitude, row.longitude
    if row.status is not None:
        base["status"] = row.status
    return base


def import_stores(engine: Engine, rows: Iterable[StoreRow], *, dry_run: bool = False) -> ImportReport:
    """Create or update the stores in ``rows`` by code, in ONE transaction (all or nothing).

    - A store's fields become the row's; columns the file did not have keep their stored values.
    - With a ``staff`` column, the store's staff set becomes exactly the row's list: userids not
      listed are removed from the store (not from WeCom).
    - Stores not in ``rows`` are left alone: the import never deletes a store. A closed store is
      marked ``status=closed`` (its groups, codes and history stay).
    - ``dry_run`` computes the same report and writes nothing.

    ``rows`` should come from a :func:`parse_stores` without errors; a duplicate or invalid code
    raises ValueError before anything is written.
    """
    rows = list(rows)
    seen: set[str] = set()
    for row in rows:
        if not _CODE_RE.fullmatch(row.code):
            raise ValueError(f"invalid store code {row.code!r}")
        if row.code in seen:
            raise ValueError(f"store code {row.code!r} appears twice")
        seen.add(row.code)

    s, ss = Store.__table__, StoreStaff.__table__
    report = ImportReport(dry_run=dry_run)
    codes = [row.code for row in rows]
    with engine.begin() as conn:
        stored: dict[str, dict] = {}
        staff: dict[str, set[str]] = {}
        for chunk in _chunks(codes):
            for r in conn.execute(select(s.c.code, *(s.c[f] for f in _STORE_FIELDS)).where(s.c.code.in_(chunk))):
                stored[r.code] = {f: getattr(r, f) for f in _STORE_FIELDS}
            for r in conn.execute(select(ss.c.store_code, ss.c.userid).where(ss.c.store_code.in_(chunk))):
                staff.setdefault(r.store_code, set()).add(r.userid)

        now = utcnow()
        inserts: list[dict] = []
        updates: list[dict] = []
        staff_in: list[dict] = []
        staff_out: list[dict] = []
        for row in rows:
            current = stored.get(row.code)
            fields = _desired(row, current)
            added: set[str] = set()
            removed: set[str] = set()
            if "staff" in row.columns:
                want, have = set(row.staff), staff.get(row.code, set())
                added, removed = want - have, have - want
                staff_in += [{"store_code": row.code, "userid": u} for u in sorted(added)]
                staff_out += [{"b_code": row.code, "b_userid": u} for u in sorted(removed)]
                report.staff_added += len(added)
                report.staff_removed += len(removed)
            if current is None:
                inserts.append({"code": row.code, **fields, "updated_at": now})
                report.created += 1
            elif fields != current or added or removed:
                updates.append({"b_code": row.code, **{f"v_{k}": v for k, v in fields.items()}, "v_updated_at": now})
                report.updated += 1
            else:
                report.unchanged += 1

        all_staff = sorted({u for row in rows if "staff" in row.columns for u in row.staff})
        report.unknown_staff = _unknown_staff(conn, all_staff)

        if dry_run:
            return report
        if inserts:
            conn.execute(insert(s), inserts)
        if updates:
            conn.execute(update(s).where(s.c.code == bindparam("b_code")).values(
                {f: bindparam(f"v_{f}") for f in (*_STORE_FIELDS, "updated_at")}), updates)
        if staff_out:
            conn.execute(delete(ss).where(ss.c.store_code == bindparam("b_code"),
                                          ss.c.userid == bindparam("b_userid")), staff_out)
        if staff_in:
            conn.execute(insert(ss), staff_in)
    return report


def _unknown_staff(conn, userids: list[str]) -> list[str]:
    """Userids no synced employee has; empty when no employees were synced yet (nothing to check)."""
    from scrm.contacts.models import Employee

    e = Employee.__table__
    if not userids or not conn.execute(select(func.count()).select_from(e)).scalar():
        return []
    known: set[str] = set()
    for chunk in _chunks(userids):
        known.update(conn.execute(select(e.c.userid).where(e.c.userid.in_(chunk))).scalars())
    return [u for u in userids if u not in known]


def _degrees_text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def export_stores(engine: Engine) -> str:
    """Every store as CSV text (the import's columns, staff joined with ';'), ordered by code.

    ``parse_stores(export_stores(engine))`` gives back exactly the stored stores.
    """
    s, ss = Store.__table__, StoreStaff.__table__
    with engine.connect() as conn:
        staff: dict[str, list[str]] = {}
        for r in conn.execute(select(ss.c.store_code, ss.c.userid).order_by(ss.c.store_code, ss.c.userid)):
            staff.setdefault(r.store_code, []).append(r.userid)
        stores = conn.execute(select(s.c.code, *(s.c[f] for f in _STORE_FIELDS)).order_by(s.c.code)).all()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in stores:
        writer.writerow([r.code, r.name, r.address or "", r.city or "", _degrees_text(r.latitude),
                         _degrees_text(r.longitude), r.status, ";".join(sorted(staff.get(r.code, [])))])
    return out.getvalue()

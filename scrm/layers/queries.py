"""What the dashboard reads about customer layers: how many customers are in each layer (per home
store), how they moved between layers in a date range, moves per day into each layer, and the
rules that moved them.

Plain functions over ``customer_layers`` and ``layer_changes``, each one grouped SQL statement
(SQLite and PostgreSQL) on the indexes those tables have: ``(home_store, layer)`` for the counts,
``(home_store, changed_at)`` / ``changed_at`` for the moves. Scope works like the KPI queries'
``KpiFilter.stores``: None is every customer (those without a home store too), a set limits every
figure to customers of those home stores (an empty set sees nothing). A move belongs to the store
the customer had when they moved (``layer_changes.home_store``).

Date ranges are local days (the corp's time zone), inclusive: [start 00:00, end + 1 day 00:00).
Layer ids are shown by their Chinese names from the rule set (:class:`LayerNames`); ids the rule
set does not know (a layer since removed, or rules that cannot be read) are shown as the id.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, cast, false, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement

from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.rules import RuleSet
from scrm.logs import get_logger
from scrm.stores.models import Store

log = get_logger(__name__)

FIRST_PLACEMENT = "新进入"  # the "from" of a customer's first layer
NO_STORE = "未归属门店"  # customers without a home store
DEFAULT_RULE = "默认层（没有规则命中）"  # rule_id None: the default layer
TOP_RULES = 10


class LayerQueryError(ValueError):
    """A question the layer queries cannot answer (a reversed date range)."""


# --- names ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNames:
    """Layer ids → Chinese names and why each layer exists (its ``operation``), in the rule set's
    order; rule ids → their descriptions. ``loaded`` False: no rule set, ids are shown as they are
    and ``error`` says why (in Chinese, for the page's notice)."""

    order: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    operations: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, str] = field(default_factory=dict)
    default_layer: str | None = None
    loaded: bool = False
    error: str | None = None

    @classmethod
    def of(cls, ruleset: RuleSet) -> LayerNames:
        return cls(order=tuple(layer.id for layer in ruleset.layers),
                   names={layer.id: layer.name for layer in ruleset.layers},
                   operations={layer.id: layer.operation for layer in ruleset.layers},
                   rules={r.id: r.description for r in ruleset.rules}, default_layer=ruleset.default_layer,
                   loaded=True)

    @classmethod
    def unavailable(cls, error: str) -> LayerNames:
        return cls(error=error)

    def name(self, layer_id: str | None) -> str:
        if layer_id is None:
            return FIRST_PLACEMENT
        return self.names.get(layer_id) or layer_id

    def operation(self, layer_id: str | None) -> str:
        return "" if layer_id is None else self.operations.get(layer_id, "")

    def known(self, layer_id: str) -> bool:
        return layer_id in self.names

    def ordered(self, ids: Iterable[str]) -> list[str]:
        """The rule set's layers in its order, then any other id seen in the data, sorted."""
        extra = sorted(set(ids) - set(self.order))
        return [*self.order, *extra]

    def rule(self, rule_id: str | None) -> str:
        """What a rule is: its description, else its id; the default layer's "rule" for None."""
        if rule_id is None:
            return DEFAULT_RULE
        return self.rules.get(rule_id) or rule_id


def load_layer_names(rules_dir: Path | str | None = None) -> LayerNames:
    """The names from the operators' rule files (``settings.layers.rules_dir`` by default). Any
    failure (no files, a lint error, the loader missing) gives ids-only names with a notice, so
    the dashboard still shows the figures."""
    try:
        if rules_dir is None:
            from scrm.config import get_settings

            rules_dir = get_settings().layers.rules_dir
        lint = importlib.import_module("scrm.layers.lint")
        ruleset = lint.load_ruleset(Path(rules_dir))
        if not isinstance(ruleset, RuleSet):
            raise TypeError(f"load_ruleset returned {type(ruleset).__name__}")
        return LayerNames.of(ruleset)
    except Exception as exc:  # noqa: BLE001 - any failure degrades to ids, never a broken page
        log.warning("layer_names_unavailable", rules_dir=str(rules_dir), error=f"{type(exc).__name__}: {exc}"[:300])
        return LayerNames.unavailable(f"分层规则读取失败（{str(rules_dir or '')[:60]}），层级以编号显示")


class RuleNames:
    """:func:`load_layer_names` for a page view: the rule files are read again only when one of
    them changed (name, size or modification time), so an operator's edit shows on the next view
    without parsing YAML on every request (~0.1 s)."""

    def __init__(self, rules_dir: Path | str | None = None):
        self.rules_dir = rules_dir
        self._key: tuple | None = None
        self._names: LayerNames | None = None

    def _folder(self) -> Path:
        if self.rules_dir is not None:
            return Path(self.rules_dir)
        from scrm.config import get_settings

        return Path(get_settings().layers.rules_dir)

    def __call__(self) -> LayerNames:
        folder = self._folder()
        try:
            key: tuple = (str(folder), tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                    for p in folder.iterdir() if p.is_file())))
        except OSError:
            key = (str(folder), None)
        if key != self._key or self._names is None:
            self._names, self._key = load_layer_names(folder), key
        return self._names


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCount:
    layer: str
    customers: int
    share: float | None  # of every customer in scope; None when there is nobody


@dataclass(frozen=True)
class StoreLayers:
    """One home store's customers per layer (``store_code`` None: customers without one)."""

    store_code: str | None
    store_name: str
    counts: dict[str, int]
    total: int


@dataclass(frozen=True)
class LayerSummary:
    layers: list[LayerCount]  # every layer of the rule set (zeros too), then ids only the data has
    total: int
    stores: list[StoreLayers]  # most customers first, then by code


@dataclass(frozen=True)
class Flow:
    store_code: str | None
    from_layer: str | None  # None: first placement
    to_layer: str
    moves: int


@dataclass(frozen=True)
class FlowMatrix:
    """From rows × to columns over the scope (first placements are the row ``None``)."""

    rows: list[str | None]
    columns: list[str]
    cells: dict[tuple[str | None, str], int]
    row_totals: dict[str | None, int]
    column_totals: dict[str, int]
    total: int
    largest: int

    def cell(self, source: str | None, target: str) -> int:
        return self.cells.get((source, target), 0)


@dataclass(frozen=True)
class DailyMove:
    day: dt.date
    to_layer: str
    moves: int


@dataclass(frozen=True)
class RuleMoves:
    rule_id: str | None
    to_layer: str
    moves: int


# --- helpers -------------------------------------------------------------------------------------


def _scope(column: Any, stores: frozenset[str] | None) -> list[ColumnElement[bool]]:
    if stores is None:
        return []
    if not stores:
        return [false()]
    return [column.in_(sorted(stores))]


def local_midnights(start: dt.date, end: dt.date, tz: dt.tzinfo) -> list[dt.datetime]:
    """The UTC instants of local midnight from ``start`` to the day after ``end`` (days + 1)."""
    if end < start:
        raise LayerQueryError(f"end {end} is before start {start}")
    days = (end - start).days + 1
    return [dt.datetime.combine(start + dt.timedelta(days=i), dt.time(0), tzinfo=tz).astimezone(dt.UTC)
            for i in range(days + 1)]


def _epoch_seconds(conn: Connection, column: Any) -> ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        # date_part is double precision (exact to the microsecond at these magnitudes); extract's
        # numeric made the moves-per-day grouping of a year of a million changes ~1.5x slower
        return cast(func.floor(func.date_part("epoch", column)), BigInteger)
    # SQLite keeps times as text and rounds fractions to milliseconds (23:59:59.9999995 would be the
    # next day): whole seconds are the text's first 19 characters
    return cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)


def _day_index(conn: Connection, column: Any, midnights: Sequence[dt.datetime]) -> ColumnElement[Any]:
    """The local day (0 = start) of a stored time, as integer arithmetic on epoch seconds: the
    range is cut into runs of days of equal length (one run unless a DST change falls in it), so
    the expression has one branch per run, not one per day."""
    runs: list[tuple[int, int, int, int]] = []  # (first day, lo epoch, hi epoch, day length)
    for i in range(len(midnights) - 1):
        lo, hi = int(midnights[i].timestamp()), int(midnights[i + 1].timestamp())
        if runs and runs[-1][3] == hi - lo and runs[-1][2] == lo:
            first, run_lo, _, length = runs[-1]
            runs[-1] = (first, run_lo, hi, length)
        else:
            runs.append((i, lo, hi, hi - lo))
    seconds = _epoch_seconds(conn, column)
    exprs = [(run_hi, (seconds - run_lo) // length + first) for first, run_lo, run_hi, length in runs]
    if len(exprs) == 1:
        return exprs[0][1]
    return case(*[(seconds < hi, e) for hi, e in exprs[:-1]], else_=exprs[-1][1])


def _bigint(value: Any) -> int:
    return int(value or 0)


@contextmanager
def _read(engine: Engine) -> Iterator[Connection]:
    """A read connection; on PostgreSQL without JIT, which compiles these grouped scans of a
    million rows for longer than they run."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


# --- the queries ---------------------------------------------------------------------------------


def store_names(engine_or_conn: Engine | Connection, codes: Iterable[str]) -> dict[str, str]:
    codes = sorted(set(codes))
    if not codes:
        return {}
    s = Store.__table__.c
    out: dict[str, str] = {}

    def read(conn: Connection) -> None:
        for i in range(0, len(codes), 500):
            out.update({r.code: r.name for r in conn.execute(
                select(s.code, s.name).where(s.code.in_(codes[i:i + 500])))})

    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.connect() as conn:
            read(conn)
    else:
        read(engine_or_conn)
    return out


def layer_counts(engine: Engine, stores: frozenset[str] | None) -> list[tuple[str | None, str, int]]:
    """(home_store, layer, customers) now: one grouped read of the (home_store, layer) index."""
    c = CustomerLayer.__table__.c
    stmt = (select(c.home_store, c.layer, func.count().label("n")).where(*_scope(c.home_store, stores))
            .group_by(c.home_store, c.layer))
    with _read(engine) as conn:
        return [(r.home_store, r.layer, _bigint(r.n)) for r in conn.execute(stmt)]


def layer_summary(engine: Engine, stores: frozenset[str] | None, names: LayerNames) -> LayerSummary:
    """Customers per layer now, with each layer's share of the scope, and per home store."""
    rows = layer_counts(engine, stores)
    per_layer: dict[str, int] = defaultdict(int)
    per_store: dict[str | None, dict[str, int]] = defaultdict(dict)
    for store, layer, n in rows:
        per_layer[layer] += n
        per_store[store][layer] = per_store[store].get(layer, 0) + n
    total = sum(per_layer.values())
    layers = [LayerCount(layer, per_layer.get(layer, 0), per_layer.get(layer, 0) / total if total else None)
              for layer in names.ordered(per_layer)]
    labels = store_names(engine, [s for s in per_store if s is not None])
    out = [StoreLayers(code, NO_STORE if code is None else labels.get(code, code), counts, sum(counts.values()))
           for code, counts in per_store.items()]
    out.sort(key=lambda s: (-s.total, s.store_code is None, s.store_code or ""))
    return LayerSummary(layers, total, out)


def layer_flows(engine: Engine, stores: frozenset[str] | None, start: dt.date, end: dt.date,
                tz: dt.tzinfo) -> list[Flow]:
    """Moves per (home store, from layer, to layer) in the local days [start, end]."""
    midnights = local_midnights(start, end, tz)
    c = LayerChange.__table__.c
    stmt = (select(c.home_store, c.from_layer, c.to_layer, func.count().label("n"))
            .where(c.changed_at >= midnights[0], c.changed_at < midnights[-1], *_scope(c.home_store, stores))
            .group_by(c.home_store, c.from_layer, c.to_layer))
    with _read(engine) as conn:
        rows = [Flow(r.home_store, r.from_layer, r.to_layer, _bigint(r.n)) for r in conn.execute(stmt)]
    rows.sort(key=lambda f: (f.store_code is None, f.store_code or "", f.from_layer is not None,
                             f.from_layer or "", f.to_layer))
    return rows


def flow_matrix(flows: Iterable[Flow], names: LayerNames) -> FlowMatrix:
    """The flows of every store summed into one from × to table: first placements first, then
    the layers in the rule set's order (every layer of the rule set is a row and a column)."""
    cells: dict[tuple[str | None, str], int] = defaultdict(int)
    for f in flows:
        cells[(f.from_layer, f.to_layer)] += f.moves
    seen = {t for _, t in cells} | {s for s, _ in cells if s is not None}
    layers = names.ordered(seen)
    rows: list[str | None] = [None, *layers]
    row_totals = {r: sum(n for (s, _), n in cells.items() if s == r) for r in rows}
    column_totals = {t: sum(n for (_, c), n in cells.items() if c == t) for t in layers}
    return FlowMatrix(rows, layers, dict(cells), row_totals, column_totals, sum(cells.values()),
                      max(cells.values(), default=0))


def daily_moves(engine: Engine, stores: frozenset[str] | None, start: dt.date, end: dt.date, tz: dt.tzinfo,
                *, include_first: bool = False) -> list[DailyMove]:
    """Moves per local day and target layer (first placements only with ``include_first``)."""
    midnights = local_midnights(start, end, tz)
    c = LayerChange.__table__.c
    where = [c.changed_at >= midnights[0], c.changed_at < midnights[-1], *_scope(c.home_store, stores)]
    if not include_first:
        where.append(c.from_layer.is_not(None))
    with _read(engine) as conn:
        day = _day_index(conn, c.changed_at, midnights).label("day")
        stmt = select(day, c.to_layer, func.count().label("n")).where(and_(*where)).group_by(day, c.to_layer)
        rows = conn.execute(stmt).all()
    out = [DailyMove(start + dt.timedelta(days=int(r.day)), r.to_layer, _bigint(r.n)) for r in rows]
    out.sort(key=lambda m: (m.day, m.to_layer))
    return out


def top_rules(engine: Engine, stores: frozenset[str] | None, start: dt.date, end: dt.date, tz: dt.tzinfo,
              *, limit: int = TOP_RULES) -> list[RuleMoves]:
    """The rules that moved most customers (first placements included) in the range, with the
    layer they moved them to; rule None is the default layer."""
    midnights = local_midnights(start, end, tz)
    c = LayerChange.__table__.c
    n = func.count().label("n")
    stmt = (select(c.rule_id, c.to_layer, n)
            .where(c.changed_at >= midnights[0], c.changed_at < midnights[-1], *_scope(c.home_store, stores))
            .group_by(c.rule_id, c.to_layer)
            .order_by(n.desc(), case((c.rule_id.is_(None), 0), else_=1), c.rule_id, c.to_layer).limit(limit))
    with _read(engine) as conn:
        rows = [RuleMoves(r.rule_id, r.to_layer, _bigint(r.n)) for r in conn.execute(stmt)]
    # the database orders NULL rule ids differently (SQLite first, PostgreSQL last): one order here
    rows.sort(key=lambda r: (-r.moves, r.rule_id is not None, r.rule_id or "", r.to_layer))
    return rows


def daily_series(moves: Iterable[DailyMove], start: dt.date, end: dt.date,
                 layers: Sequence[str]) -> list[tuple[dt.date, dict[str, int]]]:
    """One entry per day of the range (zeros included) with the moves into each layer."""
    by_day: dict[dt.date, dict[str, int]] = defaultdict(dict)
    for m in moves:
        by_day[m.day][m.to_layer] = by_day[m.day].get(m.to_layer, 0) + m.moves
    days = (end - start).days + 1
    return [(d, {layer: by_day[d].get(layer, 0) for layer in layers})
            for d in (start + dt.timedelta(days=i) for i in range(days))]

"""Server-rendered SVG charts for the dashboard: series in, one SVG string out, no JavaScript and
no CDN, so the pages work offline and inside WeCom's browser.

The SVG has a viewBox and no fixed size, so it scales to the card it sits in (390 px phones and
desktops alike). Every text that comes from data (labels, series names, the title) is XML-escaped
here; the caller may mark the result safe. A chart without data is a small SVG that says 暂无数据,
never an empty or broken box.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 400
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 30, 34
MAX_X_LABELS = 6
PALETTE = ("#1f6feb", "#f08c00", "#2f9e44", "#c2255c")
EMPTY_TEXT = "暂无数据"


@dataclass(frozen=True)
class Series:
    """One line (or one bar colour): a name for the legend and one value per x label."""

    name: str
    values: Sequence[float]
    color: str = ""
    dashed: bool = False  # a line drawn dashed, so one lying on another stays visible


# Characters XML 1.0 cannot carry at all (control characters, lone surrogates, U+FFFE/FFFF): a name
# holding one would make the whole SVG unreadable, so they are dropped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _esc(text: object) -> str:
    return escape(_NOT_XML.sub("", str(text)), quote=True)


def compact_number(value: float) -> str:
    """Axis labels: 1234 → 1,234; 12345 → 1.2万; 123456789 → 1.2亿; fractions keep two digits."""
    sign = "-" if value < 0 else ""
    v = abs(value)
    if v >= 1e8:
        return f"{sign}{v / 1e8:.1f}".rstrip("0").rstrip(".") + "亿"
    if v >= 1e4:
        return f"{sign}{v / 1e4:.1f}".rstrip("0").rstrip(".") + "万"
    if v == int(v):
        return f"{sign}{int(v):,}"
    return f"{sign}{v:.2f}"


def nice_ticks(low: float, high: float, count: int = 4, *, integers: bool = False) -> list[float]:
    """Round tick values covering [low, high] (0 always inside), about ``count`` steps; whole
    steps when the values are counts."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-9:  # nothing to scale (or a span no chart shows: log10 would underflow)
        high = low + 1
    raw = (high - low) / count
    if integers:
        raw = max(raw, 1.0)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step)
    last = math.ceil(high / step)
    if last * step < high:  # high / step underflowed (a subnormal high beside a large low)
        last += 1
    if first * step > low:
        first -= 1
    return [k * step for k in range(first, max(last, first + 1) + 1)]


def _check(labels: Sequence[str], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels")
        if not all(math.isfinite(v) for v in s.values):
            raise ValueError(f"series {s.name!r} has a value that is not a finite number")


def empty_chart(title: str) -> str:
    """The no-data state: a short card-sized SVG saying 暂无数据."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart empty" viewBox="0 0 {WIDTH} 90" '
            f'width="100%" role="img" aria-label="{_esc(title)}：{EMPTY_TEXT}">'
            f'<title>{_esc(title)}：{EMPTY_TEXT}</title>'
            f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="89" rx="8" fill="#fafbfc" stroke="#e3e6ea"/>'
            f'<text x="{WIDTH / 2}" y="50" text-anchor="middle" font-size="14" fill="#888">{EMPTY_TEXT}</text>'
            f'</svg>')


class _Frame:
    """The axes: y scale from the values, x labels thinned to fit, legend on top."""

    def __init__(self, labels: Sequence[str], series: Sequence[Series], fmt: Callable[[float], str]):
        values = [v for s in series for v in s.values]
        self.ticks = nice_ticks(min(values), max(values), integers=all(v == int(v) for v in values))
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.plot_w, self.plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
        self.labels, self.series, self.fmt = labels, series, fmt

    def y(self, value: float) -> float:
        return TOP + self.plot_h * (self.high - value) / (self.high - self.low)

    def axes(self, x_of: Callable[[int], float]) -> list[str]:
        out = []
        for tick in self.ticks:
            y = self.y(tick)
            out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{"#999" if tick == 0 else "#e6e8eb"}" stroke-width="1"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12" '
                       f'fill="#666">{_esc(self.fmt(tick))}</text>')
        n = len(self.labels)
        step = max(1, math.ceil(n / MAX_X_LABELS))
        shown = list(range(0, n, step))
        if n > 1 and shown[-1] != n - 1 and (n - 1 - shown[-1]) >= step / 2:
            shown.append(n - 1)
        for i in shown:
            anchor = "middle"
            if n > 1 and i == 0 and x_of(i) - LEFT < 20:
                anchor = "start"
            elif n > 1 and i == n - 1 and WIDTH - RIGHT - x_of(i) < 20:
                anchor = "end"
            out.append(f'<text class="xlabel" x="{x_of(i):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                       f'text-anchor="{anchor}" font-size="12" fill="#666">{_esc(self.labels[i])}</text>')
        return out

    def legend(self) -> list[str]:
        out, x = [], float(LEFT)
        for i, s in enumerate(self.series):
            color = _color(s, i)
            if s.dashed:
                out.append(f'<line x1="{x:.1f}" x2="{x + 10:.1f}" y1="14" y2="14" stroke="{_esc(color)}" '
                           f'stroke-width="2" stroke-dasharray="3 2"/>')
            else:
                out.append(f'<rect x="{x:.1f}" y="9" width="10" height="10" rx="2" fill="{_esc(color)}"/>')
            name = s.name if len(s.name) <= 16 else s.name[:15] + "…"
            out.append(f'<text x="{x + 14:.1f}" y="18" font-size="13" fill="#333">{_esc(name)}</text>')
            x += 14 + 13 * len(name) + 16
        return out


def _color(s: Series, i: int) -> str:
    return s.color or PALETTE[i % len(PALETTE)]


def _open(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="100%" role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>')


def _has_data(labels: Sequence[str], series: Sequence[Series]) -> bool:
    return bool(labels) and bool(series)


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
               fmt: Callable[[float], str] = compact_number) -> str:
    """A line per series with a dot (``circle.pt``) per label, each dot titled with its value."""
    _check(labels, series)
    if not _has_data(labels, series):
        return empty_chart(title)
    frame = _Frame(labels, series, fmt)
    n = len(labels)

    def x_of(i: int) -> float:
        return LEFT + frame.plot_w / 2 if n == 1 else LEFT + frame.plot_w * i / (n - 1)

    out = [_open(title), *frame.axes(x_of), *frame.legend()]
    radius = 3 if n <= 31 else 2 if n <= 92 else 1.2
    for si, s in enumerate(series):
        color = _esc(_color(s, si))
        points = " ".join(f"{x_of(i):.1f},{frame.y(v):.1f}" for i, v in enumerate(s.values))
        if n > 1:
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            out.append(f'<polyline class="line" points="{points}" fill="none" stroke="{color}" '
                       f'stroke-width="2" stroke-linejoin="round"{dash}/>')
        for i, v in enumerate(s.values):
            out.append(f'<circle class="pt" data-series="{si}" cx="{x_of(i):.1f}" cy="{frame.y(v):.1f}" '
                       f'r="{radius}" fill="{color}"><title>{_esc(labels[i])} {_esc(s.name)}：'
                       f'{_esc(fmt(v))}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
              fmt: Callable[[float], str] = compact_number) -> str:
    """Grouped bars: per label one bar (``rect.bar``) per series, each titled with its value."""
    _check(labels, series)
    if not _has_data(labels, series):
        return empty_chart(title)
    frame = _Frame(labels, series, fmt)
    n, k = len(labels), len(series)
    band = frame.plot_w / n

    def x_of(i: int) -> float:
        return LEFT + band * (i + 0.5)

    out = [_open(title), *frame.axes(x_of), *frame.legend()]
    inner = band * 0.8
    bar_w = inner / k
    zero = frame.y(0)
    for si, s in enumerate(series):
        color = _esc(_color(s, si))
        for i, v in enumerate(s.values):
            x = LEFT + band * i + band * 0.1 + bar_w * si
            top, bottom = sorted((frame.y(v), zero))
            out.append(f'<rect class="bar" data-series="{si}" x="{x:.2f}" y="{top:.1f}" width="{bar_w:.2f}" '
                       f'height="{bottom - top:.1f}" fill="{color}"><title>{_esc(labels[i])} {_esc(s.name)}：'
                       f'{_esc(fmt(v))}</title></rect>')
    out.append("</svg>")
    return "".join(out)


# --- charts of categories and stacks (the layers page) --------------------------------------------

HBAR_ROW = 26
HBAR_LABEL_W = 96
HBAR_VALUE_W = 64


def _short(text: str, size: int) -> str:
    return text if len(text) <= size else text[:size - 1] + "…"


def hbar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, color: str = PALETTE[0],
               fmt: Callable[[float], str] = compact_number, notes: Sequence[str] | None = None) -> str:
    """One horizontal bar (``rect.bar``) per label, every label shown (a category chart: a bar
    chart's thinned x labels would hide some), lengths proportional to the values (which must be
    ≥ 0), the value written at the end; ``notes`` add a line to each bar's tooltip."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values for {len(labels)} labels")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError("hbar_chart draws finite values ≥ 0")
    if not labels:
        return empty_chart(title)
    height = 10 + HBAR_ROW * len(labels)
    plot_w = WIDTH - HBAR_LABEL_W - HBAR_VALUE_W
    top = max(values)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart hbar" viewBox="0 0 {WIDTH} {height}" '
           f'width="100%" role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = 5 + HBAR_ROW * i
        w = plot_w * v / top if top > 0 else 0.0
        note = f"\n{notes[i]}" if notes and i < len(notes) and notes[i] else ""
        out.append(f'<text x="{HBAR_LABEL_W - 6}" y="{y + 17}" text-anchor="end" font-size="13" '
                   f'fill="#333">{_esc(_short(label, 7))}</text>')
        out.append(f'<rect x="{HBAR_LABEL_W}" y="{y + 3}" width="{plot_w}" height="{HBAR_ROW - 8}" rx="3" '
                   f'fill="#f3f5f7"/>')
        out.append(f'<rect class="bar" data-series="0" x="{HBAR_LABEL_W}" y="{y + 3}" width="{w:.2f}" '
                   f'height="{HBAR_ROW - 8}" rx="3" fill="{_esc(color)}"><title>{_esc(label)}：{_esc(fmt(v))}'
                   f'{_esc(note)}</title></rect>')
        out.append(f'<text x="{HBAR_LABEL_W + w + 4:.2f}" y="{y + 17}" font-size="12" '
                   f'fill="#555">{_esc(fmt(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend_rows(series: Sequence[Series]) -> list[list[tuple[int, str, float]]]:
    """The legend wrapped to the chart's width: rows of (series index, shown name, x)."""
    rows: list[list[tuple[int, str, float]]] = [[]]
    x = 8.0
    for i, s in enumerate(series):
        name = _short(s.name, 10)
        width = 14 + 13 * len(name) + 12
        if rows[-1] and x + width > WIDTH - 4:
            rows.append([])
            x = 8.0
        rows[-1].append((i, name, x))
        x += width
    return rows


def stacked_bar_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
                      fmt: Callable[[float], str] = compact_number) -> str:
    """Per label one bar stacked from the series (values ≥ 0, e.g. moves into each layer per day):
    a ``rect.bar`` per non-zero value, each titled with its label, series and value. The legend
    wraps onto as many rows as the names need, the chart growing downwards."""
    _check(labels, series)
    if any(v < 0 for s in series for v in s.values):
        raise ValueError("stacked_bar_chart draws values ≥ 0")
    if not _has_data(labels, series):
        return empty_chart(title)
    n = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    frame = _Frame(labels, [Series("", totals)], fmt)
    band = frame.plot_w / n

    def x_of(i: int) -> float:
        return LEFT + band * (i + 0.5)

    legend = _legend_rows(series)
    extra = max(0, 18 * len(legend) + 6 - TOP)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart stacked" viewBox="0 0 {WIDTH} {HEIGHT + extra}" '
           f'width="100%" role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>']
    for row, items in enumerate(legend):
        y = 4 + 18 * row
        for i, name, x in items:
            out.append(f'<rect x="{x:.1f}" y="{y + 1}" width="10" height="10" rx="2" '
                       f'fill="{_esc(_color(series[i], i))}"/>')
            out.append(f'<text x="{x + 14:.1f}" y="{y + 10}" font-size="13" fill="#333">{_esc(name)}</text>')
    out.append(f'<g transform="translate(0 {extra})">')
    out.extend(frame.axes(x_of))
    width = band * 0.7
    for i in range(n):
        base = 0.0
        for si, s in enumerate(series):
            v = s.values[i]
            if v <= 0:
                continue
            y_top, y_bottom = frame.y(base + v), frame.y(base)
            out.append(f'<rect class="bar" data-series="{si}" x="{LEFT + band * i + band * 0.15:.2f}" '
                       f'y="{y_top:.1f}" width="{width:.2f}" height="{y_bottom - y_top:.1f}" '
                       f'fill="{_esc(_color(s, si))}"><title>{_esc(labels[i])} {_esc(s.name)}：{_esc(fmt(v))}'
                       f'</title></rect>')
            base += v
    out.append("</g></svg>")
    return "".join(out)

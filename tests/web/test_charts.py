"""The dashboard's SVG charts (scrm/web/charts.py): whatever the series and labels, the SVG is
well-formed XML, has one point (line) or bar per label and series, keeps every mark inside the
viewBox, orders points by value, and shows hostile labels as text; no data says 暂无数据.

The oracle reads the SVG back with an XML parser and compares with the input series directly
(no use of the chart's own scale code).

Mutations tried (each made the named tests fail, then was undone):
- _esc without escape(): test_line_chart_is_well_formed_with_a_point_per_label (XML parse error),
  test_hostile_labels_are_text_not_markup;
- the y scale inverted (TOP + plot_h * (value - low) / …): test_points_are_ordered_by_value;
- bars all drawn from the top of the plot: test_bar_heights_are_proportional_to_values;
- the last point dropped (``enumerate(s.values[:-1])``): the per-label counts fail;
- line_chart drawing axes for no labels instead of the empty state: test_no_data_says_so.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scrm.web.charts import Series, bar_chart, compact_number, line_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"

# Yuan with fen, as the dashboard passes them (a float finer than that is no figure it draws; the
# ticks' own test below still takes any float, subnormals included).
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 2))
counts = st.integers(min_value=0, max_value=10**7).map(float)


@st.composite
def charts(draw, value_strategy=values, max_days=62):
    n = draw(st.integers(min_value=1, max_value=max_days))
    labels = draw(st.lists(st.text(max_size=12), min_size=n, max_size=n))
    k = draw(st.integers(min_value=1, max_value=3))
    series = [Series(draw(st.text(max_size=10)), draw(st.lists(value_strategy, min_size=n, max_size=n)))
              for _ in range(k)]
    return labels, series


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    return root


def view_box(root: ET.Element) -> tuple[float, float]:
    _, _, w, h = map(float, root.get("viewBox").split())
    return w, h


def marks(root: ET.Element, tag: str, cls: str, series: int) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if e.get("class") == cls and e.get("data-series") == str(series)]


@settings(max_examples=100, deadline=None)
@given(charts())
def test_line_chart_is_well_formed_with_a_point_per_label(chart):
    labels, series = chart
    root = parse(line_chart(labels, series, title="每日 GMV <元>"))
    w, h = view_box(root)
    for i, _ in enumerate(series):
        points = marks(root, "circle", "pt", i)
        assert len(points) == len(labels)
        xs = [float(p.get("cx")) for p in points]
        assert xs == sorted(xs)  # left to right, one per day
        for p in points:
            assert 0 <= float(p.get("cx")) <= w and 0 <= float(p.get("cy")) <= h
    assert root.find(SVG + "title").text == "每日 GMV <元>"


@settings(max_examples=100, deadline=None)
@given(charts())
def test_bar_chart_is_well_formed_with_a_bar_per_label(chart):
    labels, series = chart
    root = parse(bar_chart(labels, series, title="每日点击"))
    w, h = view_box(root)
    for i, _ in enumerate(series):
        bars = marks(root, "rect", "bar", i)
        assert len(bars) == len(labels)
        for b in bars:
            x, y, bw, bh = (float(b.get(a)) for a in ("x", "y", "width", "height"))
            assert bw > 0 and bh >= 0
            assert -0.05 <= x and x + bw <= w + 0.05 and 0 <= y and y + bh <= h + 0.05


@settings(max_examples=100, deadline=None)
@given(charts(max_days=31))
def test_points_are_ordered_by_value(chart):
    """A larger value is drawn higher (smaller y), an equal value at the same height."""
    labels, series = chart
    root = parse(line_chart(labels, series, title="t"))
    drawn = [(v, float(p.get("cy"))) for i, s in enumerate(series)
             for v, p in zip(s.values, marks(root, "circle", "pt", i), strict=True)]
    span = max(abs(v) for v, _ in drawn) or 1
    for v1, y1 in drawn:
        for v2, y2 in drawn:
            if v1 - v2 > span * 0.01:  # clearly larger (coordinates are rounded to 0.1)
                assert y1 < y2
            if v1 == v2:
                assert y1 == y2


@settings(max_examples=100, deadline=None)
@given(charts(value_strategy=counts, max_days=31))
def test_bar_heights_are_proportional_to_values(chart):
    labels, series = chart
    root = parse(bar_chart(labels, series, title="t"))
    drawn = [(v, float(b.get("height"))) for i, s in enumerate(series)
             for v, b in zip(s.values, marks(root, "rect", "bar", i), strict=True)]
    top_value, top_height = max(drawn)
    if top_value == 0:
        assert all(hgt == 0 for _, hgt in drawn)
        return
    for v, hgt in drawn:
        assert hgt == pytest.approx(top_height * v / top_value, abs=0.15)


def test_hostile_labels_are_text_not_markup():
    evil = '<script>alert("x")</script>&amp;'
    for chart in (line_chart, bar_chart):
        svg = chart(["11-01", evil, "控制\x01字符"], [Series(evil, [1, 2, 3])], title=evil)
        root = parse(svg)
        assert "<script>" not in svg and not list(root.iter(SVG + "script")) and not list(root.iter("script"))
        texts = [t.text for t in root.iter(SVG + "title")]
        assert evil in texts  # the chart title, shown as text
        assert any(t and t.startswith(evil + " " + evil) for t in texts)  # a point's tooltip
        assert any(t and "控制字符" in t for t in texts)  # the control character dropped, not fatal


@pytest.mark.parametrize("chart", [line_chart, bar_chart])
@pytest.mark.parametrize("labels, series", [([], [Series("GMV", [])]), (["11-01"], []), ([], [])])
def test_no_data_says_so(chart, labels, series):
    svg = chart(labels, series, title="每日 GMV")
    root = parse(svg)
    assert "暂无数据" in "".join(root.itertext())
    assert not list(root.iter(SVG + "circle")) and not [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
    assert root.get("viewBox")


def test_a_single_day_and_all_zero_days_still_draw():
    root = parse(line_chart(["11-30"], [Series("GMV", [12.5])], title="t"))
    assert len(marks(root, "circle", "pt", 0)) == 1
    root = parse(bar_chart(["a", "b"], [Series("点击", [0, 0])], title="t"))
    assert len(marks(root, "rect", "bar", 0)) == 2
    assert [t.text for t in root.iter(SVG + "text") if t.get("text-anchor") == "end"][:2] == ["0", "1"]


def test_bad_series_are_refused():
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        line_chart(["a", "b", "c"], [Series("x", [1, 2])], title="t")
    with pytest.raises(ValueError, match="not a finite number"):
        bar_chart(["a"], [Series("x", [math.nan])], title="t")


@given(st.floats(min_value=-1e12, max_value=1e12), st.floats(min_value=-1e12, max_value=1e12),
       st.booleans())
def test_ticks_cover_the_range_and_zero_evenly(a, b, integers):
    low, high = min(a, b), max(a, b)
    ticks = nice_ticks(low, high, integers=integers)
    assert ticks[0] <= min(low, 0) and ticks[-1] >= max(high, 0)
    assert 2 <= len(ticks) <= 12
    steps = [y - x for x, y in zip(ticks, ticks[1:], strict=False)]
    assert all(s == pytest.approx(steps[0], rel=1e-6) for s in steps)
    if integers:
        assert steps[0] >= 1
    assert any(t == pytest.approx(0, abs=steps[0] * 1e-6) for t in ticks)


@pytest.mark.parametrize("value, text", [(0, "0"), (1234, "1,234"), (12345, "1.2万"), (-25000, "-2.5万"),
                                         (120000000, "1.2亿"), (10000, "1万"), (0.25, "0.25")])
def test_compact_numbers(value, text):
    assert compact_number(value) == text



@pytest.mark.parametrize("chart", [line_chart, bar_chart])
def test_a_vanishingly_small_value_still_draws(chart):
    """Hypothesis found it in CI: one value of 5e-324 made the tick step underflow to 0 and
    ``log10`` raise (a 500 on the dashboard). Mutation tried: the old ``high == low`` guard."""
    root = parse(chart(["11-01"], [Series("GMV", [5e-324])], title="t"))
    assert root.tag.endswith("svg")
    assert nice_ticks(0, 5e-324)[-1] >= 5e-324


def test_ticks_cover_a_subnormal_high_beside_a_large_low():
    """Hypothesis found it in CI: low -2e11 and high 2.2e-313 gave a last tick of 0 (high / step
    underflowed to 0). Mutation tried: without the ``last * step < high`` correction."""
    ticks = nice_ticks(-200000000001.0, 2.2250738585e-313)
    assert ticks[0] <= -200000000001.0 and ticks[-1] >= 2.2250738585e-313

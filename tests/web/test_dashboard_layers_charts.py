"""The layers page's two charts added to scrm/web/charts.py: hbar_chart (a bar per layer, every
label shown) and stacked_bar_chart (moves per day, stacked by target layer). Whatever the input,
the SVG is well-formed, every mark lies inside the viewBox, bar lengths / stack heights are
proportional to the values (the oracle reads the SVG back and compares ratios with the input), and
hostile names are text.

Mutations tried (each made the named tests fail, then was undone):
- stacked_bar_chart not raising the base after each segment (``base += v`` removed):
  test_stacks_are_proportional_and_inside (segments overlap: a stack's top is not its total);
- hbar_chart scaling by the sum instead of the largest value: test_hbar_lengths_are_proportional (at
  first it survived: the test compared bars with the longest bar; it now compares with the track);
- _legend_rows never wrapping (``if False and rows[-1]``): test_long_legends_wrap_inside_the_chart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scrm.web.charts import Series, hbar_chart, stacked_bar_chart

SVG = "{http://www.w3.org/2000/svg}"
counts = st.integers(min_value=0, max_value=10**6).map(float)


def bars(svg: str) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.fromstring(svg)
    return root, [e for e in root.iter(SVG + "rect") if e.get("class") == "bar"]


def box(root: ET.Element) -> tuple[float, float]:
    _, _, w, h = map(float, root.get("viewBox").split())
    return w, h


names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
                max_size=14)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_hbar_lengths_are_proportional(data):
    n = data.draw(st.integers(min_value=1, max_value=12))
    labels = data.draw(st.lists(names, min_size=n, max_size=n))
    values = data.draw(st.lists(counts, min_size=n, max_size=n))
    root, marks = bars(hbar_chart(labels, values, title="各层人数", notes=["<b>说明</b>"] * n))
    w, h = box(root)
    assert len(marks) == n
    widths = [float(m.get("width")) for m in marks]
    # each bar lies on a grey track of the row's full length; the largest value fills its track
    tracks = [float(e.get("width")) for e in root.iter(SVG + "rect") if e.get("class") is None]
    assert len(tracks) == n and len(set(tracks)) == 1
    longest = tracks[0]
    top = max(values)
    for label, v, m, wd in zip(labels, values, marks, widths, strict=True):
        assert 0 <= float(m.get("x")) and float(m.get("x")) + wd <= w + 0.01
        assert 0 <= float(m.get("y")) and float(m.get("y")) + float(m.get("height")) <= h
        assert wd == pytest.approx(longest * v / top if top else 0, abs=0.02)
        tip = m.find(SVG + "title").text
        assert tip.startswith(f"{label}：") and tip.endswith("<b>说明</b>")  # the whole label, as text


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_stacks_are_proportional_and_inside(data):
    n = data.draw(st.integers(min_value=1, max_value=40))
    k = data.draw(st.integers(min_value=1, max_value=6))
    series = [Series(data.draw(names), data.draw(st.lists(counts, min_size=n, max_size=n))) for _ in range(k)]
    root, marks = bars(stacked_bar_chart([f"d{i}" for i in range(n)], series, title="每日层级变动"))
    w, h = box(root)
    assert len(marks) == sum(1 for s in series for v in s.values if v > 0)
    for m in marks:
        assert 0 <= float(m.get("x")) and float(m.get("x")) + float(m.get("width")) <= w
        assert 0 <= float(m.get("y")) and float(m.get("y")) + float(m.get("height")) <= h
    per_label: dict[float, list[ET.Element]] = {}
    for m in marks:
        per_label.setdefault(float(m.get("x")), []).append(m)
    # a stack's segments touch end to end: its span is the sum of its heights, and proportional
    # to the label's total (labels with a total of 0 draw nothing)
    spans = []
    for x in sorted(per_label):
        group = per_label[x]
        top = min(float(m.get("y")) for m in group)
        bottom = max(float(m.get("y")) + float(m.get("height")) for m in group)
        assert bottom - top == pytest.approx(sum(float(m.get("height")) for m in group), abs=0.1 * len(group) + 0.05)
        spans.append(bottom - top)
    totals = [t for t in (sum(s.values[i] for s in series) for i in range(n)) if t > 0]
    assert len(spans) == len(totals)
    if totals:
        biggest, tallest = max(totals), max(spans)
        for total, span in zip(totals, spans, strict=True):
            assert span == pytest.approx(tallest * total / biggest, abs=0.1 * k + 0.1)


def test_long_legends_wrap_inside_the_chart():
    names = ["首单客", "复购客", "高价值客户很长的名字", "沉睡", "已流失", "<script>x</script>", "新客"]
    svg = stacked_bar_chart(["a", "b"], [Series(name, [1, 2]) for name in names], title="t")
    root = ET.fromstring(svg)
    w, _ = box(root)
    texts = [t for t in root.iter(SVG + "text") if t.text and any(t.text.startswith(n[:5]) for n in names)]
    assert len(texts) == len(names)
    assert len({t.get("y") for t in texts}) >= 2  # wrapped onto more than one row
    for t in texts:
        assert float(t.get("x")) + 13 * len(t.text) <= w + 1
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_empty_and_bad_input():
    assert "暂无数据" in hbar_chart([], [], title="t") and "暂无数据" in stacked_bar_chart([], [], title="t")
    with pytest.raises(ValueError):
        hbar_chart(["a"], [-1.0], title="t")
    with pytest.raises(ValueError):
        stacked_bar_chart(["a"], [Series("s", [-1.0])], title="t")

"""``scrm orders import``: every bad row reported with its line, nothing imported when any row is bad,
a re-import changes nothing, and the summary counts."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from scrm.orders import service
from scrm.orders.cli import orders_app
from scrm.orders.csvimport import ImportRefused, import_orders
from scrm.orders.models import CustomerMobile, Order

runner = CliRunner()
HEADER = "order_id,paid_at,amount_yuan,amount_fen,items,store_code,from,external_userid,unionid,mobile\n"
GOOD = (HEADER
        + 'SO-1,2026-11-30T10:15:00+08:00,129.00,,"[{""sku"": ""milk"", ""qty"": 2}]",SH001,,wm_a,,\n'
        + "SO-2,2026-11-30T11:00:00+08:00,,4500,,SH001,post-7,,u_b,\n"
        + "SO-3,2026-11-30T12:00:00Z,,100,,,,,,139-0013-9000\n"
        + "SO-4,2026-11-30T12:30:00+08:00,0.5,,,,,,,13700137000\n")


def orders_in(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Order.__table__)).scalar_one()


def test_a_good_file_is_imported_once_with_its_summary(customers):
    """Tried: counting a re-imported order as imported (the second summary said 4 imported)."""
    service.reindex_mobiles(customers)
    report = import_orders(customers, ("\ufeff" + GOOD).encode())  # with a BOM, as Excel writes it
    assert (report.imported, report.already_present, report.matched, report.unmatched) == (4, 0, 3, 1)
    again = import_orders(customers, GOOD.encode())
    assert (again.imported, again.already_present, again.matched, again.unmatched) == (0, 4, 3, 1)
    assert orders_in(customers) == 4
    with customers.connect() as conn:
        rows = {r.order_id: r for r in conn.execute(select(Order.__table__))}
    assert (rows["SO-1"].amount_fen, rows["SO-4"].amount_fen) == (12900, 50)
    assert rows["SO-1"].items == [{"sku": "milk", "qty": 2}]
    assert (rows["SO-2"].from_param, rows["SO-2"].external_userid, rows["SO-3"].external_userid) == (
        "post-7", "wm_b", "wm_c")


def test_every_bad_row_is_reported_by_line_and_nothing_is_imported(customers):
    """A file with good rows around bad ones imports nothing and names each bad line (counting the
    header as line 1 and a quoted cell spanning two lines). Tried: numbering a row by its last line (line 6
    was named for the record starting on 5), and no check of an id repeated within the file."""
    text = (HEADER
            + "SO-1,2026-11-30T10:15:00+08:00,129.00,,,,,wm_a,,\n"  # line 2: good
            + "SO-2,2026-11-30T10:15:00,,100,,,,wm_a,,\n"  # 3: no zone
            + "SO-3,2026-11-30T10:15:00+08:00,12.345,,,,,wm_a,,\n"  # 4: 3 decimals
            + 'SO-4,2026-11-30T10:15:00+08:00,,100,"[{""sku"":\n""milk""}",,,wm_a,,\n'  # 5-6: items cut short
            + "SO-5,2026-11-30T10:15:00+08:00,,-5,,,,wm_a,,\n"  # 7: negative
            + "SO-6,2026-11-30T10:15:00+08:00,,100,,,,,,12345\n"  # 8: not a mobile
            + "SO-7,2026-11-30T10:15:00+08:00,,100,,,,,,\n"  # 9: nobody
            + "SO-8,2026-11-30T10:15:00+08:00,,100,[oops,,,wm_a,,\n"  # 10: items not JSON
            + "SO-1,2026-11-30T10:15:00+08:00,130.00,,,,,wm_a,,\n"  # 11: SO-1 again, other amount
            + "SO-9,2026-11-30T10:15:00+08:00,,100,,,,wm_a\n")  # 12: too few cells
    with pytest.raises(ImportRefused) as exc:
        import_orders(customers, text.encode())
    got = {p.line: p.reason for p in exc.value.problems}
    assert sorted(got) == [3, 4, 5, 7, 8, 9, 10, 11, 12]
    assert "items: not valid JSON" in got[5]  # the record's first line, not its last
    assert "paid_at: Input should have timezone info" in got[3]
    assert "amount_yuan: '12.345' must be non-negative with at most 2 decimals" in got[4]
    assert "amount_fen: '-5' is not a whole, non-negative number of fen" in got[7]
    assert "mobile: '12345' is not a Chinese mobile" in got[8]
    assert "the customer is missing" in got[9]
    assert "items: not valid JSON" in got[10]
    assert got[11] == "order 'SO-1' appears on line 2 with different content"
    assert got[12] == "8 cells, the header has 10"
    assert orders_in(customers) == 0


def test_a_row_that_conflicts_with_a_recorded_order_stops_the_whole_import(customers):
    """The file is valid on its own, but SO-2 was recorded with another amount: nothing is imported,
    not SO-1 before it nor the mobile SO-1 would have taught the index. Tried: committing the rows
    before the conflict instead of rolling back (SO-1 was stored)."""
    import_orders(customers, (HEADER + "SO-2,2026-11-30T11:00:00+08:00,,9999,,,,,u_b,\n").encode())
    text = (HEADER + "SO-1,2026-11-30T10:15:00+08:00,,100,,,,wm_b,,13600136000\n"
            + "SO-2,2026-11-30T11:00:00+08:00,,4500,,SH001,post-7,,u_b,\n")
    with pytest.raises(ImportRefused) as exc:
        import_orders(customers, text.encode())
    [problem] = exc.value.problems
    assert problem.line == 3 and "amount_fen was 9999, now 4500" in problem.reason
    assert orders_in(customers) == 1
    with customers.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CustomerMobile.__table__)).scalar_one() == 0


@pytest.mark.parametrize(("data", "line", "says"), [
    (b"", 1, "the file is empty"),
    (b"order_id,paid_at,amount,mobile\n", 1, "unknown column(s) 'amount'; missing column(s) amount_fen or amount_yuan"),
    ("order_id,paid_at,amount_fen,mobile\nSO-1,2026-11-30T10:15:00+08:00,1,13800138000 张\n".encode("gbk"), 0,
     "the file is not UTF-8"),
])
def test_a_file_that_is_not_an_order_csv_is_refused(customers, data, line, says):
    with pytest.raises(ImportRefused) as exc:
        import_orders(customers, data)
    assert exc.value.problems[0].line == line and says in exc.value.problems[0].reason


@pytest.fixture
def cli_db(customers, db_url, monkeypatch):
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines

    monkeypatch.setenv("SCRM_DATABASE__URL", db_url)
    reset_settings_cache()
    yield customers
    dispose_engines()
    reset_settings_cache()


def test_the_command_prints_each_bad_line_or_the_summary(cli_db, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD + "SO-9,2026-11-30T10:15:00+08:00,,x,,,,wm_a,,\n", encoding="utf-8")
    result = runner.invoke(orders_app, ["import", str(bad)])
    assert result.exit_code == 2
    assert "line 6: amount_fen: 'x' is not a whole, non-negative number of fen" in result.output
    assert "1 bad row(s) in" in result.output and "nothing imported" in result.output
    assert orders_in(cli_db) == 0

    reindexed = runner.invoke(orders_app, ["reindex-mobiles"])
    assert reindexed.exit_code == 0 and "indexed 2 new mobile(s) of 3 customer(s)" in reindexed.output
    good = tmp_path / "good.csv"
    good.write_text(GOOD, encoding="utf-8")
    result = runner.invoke(orders_app, ["import", str(good)])
    assert result.exit_code == 0, result.output
    assert "imported 4, already present 0, matched 3, unmatched 1 (4 rows)" in result.output
    result = runner.invoke(orders_app, ["import", str(good)])
    assert "imported 0, already present 4, matched 3, unmatched 1 (4 rows)" in result.output
    missing = runner.invoke(orders_app, ["import", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "cannot read" in missing.output

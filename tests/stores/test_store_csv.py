"""The store list as CSV (`scrm stores import/export/list`), the way operators' spreadsheets arrive.

Each bad-input test writes a small sheet with one mistake an operator makes (a space in a code,
latitude and longitude swapped, a GBK file from Excel...) and checks the error names the right
file line and column and says what to do. Importing is all-or-nothing; export imports back unchanged.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from scrm.stores.cli import stores_app
from scrm.stores.csvio import (
    COLUMNS,
    ImportReport,
    RowError,
    StoreRow,
    export_stores,
    import_stores,
    parse_stores,
)
from scrm.stores.models import Store, StoreStaff

HEADER = ",".join(COLUMNS)
GOOD = f"""{HEADER}
SH0231,瑞幸咖啡(南京西路店),上海市静安区南京西路1266号,上海,31.2304,121.4737,open,zhangwei;lisi
SH0232,瑞幸咖啡(徐家汇店),上海市徐汇区漕溪北路88号,上海,31.1954,121.4365,营业,wangfang|zhangwei
BJ0101,瑞幸咖啡(国贸店),"北京市朝阳区建国门外大街1号, 国贸商城B1",北京,,,停业,
"""


def sheet(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def only_error(text: str | bytes) -> RowError:
    result = parse_stores(text)
    assert len(result.errors) == 1, "\n".join(map(str, result.errors))
    return result.errors[0]


# --------------------------------------------------------------------------------------------
# Parsing: good input


def test_a_good_sheet_parses_to_clean_rows():
    result = parse_stores(GOOD)
    assert result.errors == [] and result.encoding == "text"
    nanjing, xujiahui, guomao = result.stores
    assert nanjing == StoreRow(code="SH0231", name="瑞幸咖啡(南京西路店)", address="上海市静安区南京西路1266号",
                               city="上海", latitude=31.2304, longitude=121.4737, status="open",
                               staff=["lisi", "zhangwei"])
    assert (nanjing.line, xujiahui.line, guomao.line) == (2, 3, 4)
    assert xujiahui.status == "open" and xujiahui.staff == ["wangfang", "zhangwei"]
    assert guomao.status == "closed" and guomao.address == "北京市朝阳区建国门外大街1号, 国贸商城B1"
    assert guomao.latitude is None and guomao.longitude is None and guomao.staff == []


@pytest.mark.parametrize("cell, status", [("open", "open"), ("OPEN", "open"), ("Closed", "closed"),
                                          ("营业", "open"), ("停业", "closed"), ("", None)])
def test_status_words(cell, status):
    (row,) = parse_stores(sheet(f"SH01,x,,,,,{cell},")).stores
    assert row.status == status


def test_staff_split_on_semicolon_or_bar_trimmed_deduplicated():
    (row,) = parse_stores(sheet("SH01,x,,,,,, zhangwei | lisi;zhangwei;;wang.fang@corp ")).stores
    assert row.staff == ["lisi", "wang.fang@corp", "zhangwei"]


def test_columns_in_any_order_any_case_and_optional_ones_left_out():
    (row,) = parse_stores("Name, CODE ,Staff\n南京西路店,SH0231,zhangwei\n").stores
    assert (row.code, row.name, row.staff, row.status) == ("SH0231", "南京西路店", ["zhangwei"], None)
    assert row.columns == {"code", "name", "staff"}


def test_blank_lines_and_empty_excel_rows_are_skipped_but_lines_still_count():
    text = sheet("SH01,a,,,,,,", "", ",,,,,,,", "SH 02,b,,,,,,")
    result = parse_stores(text)
    assert [r.code for r in result.stores] == ["SH01"]
    assert [(e.line, e.column) for e in result.errors] == [(5, "code")]


def test_a_quoted_cell_spanning_lines_keeps_the_following_line_numbers_right():
    text = sheet('SH01,a,"第一行\n第二行",,,,,', "SH02,,,,,,,")
    result = parse_stores(text)
    assert result.stores[0].address == "第一行\n第二行"
    assert [str(e) for e in result.errors] == ["line 4, name: name is empty: every store needs a name"]


# --------------------------------------------------------------------------------------------
# Parsing: each kind of bad input, at its line


def test_swapped_latitude_and_longitude_get_a_hint():
    error = only_error(sheet("SH0231,南京西路店,,上海,31.2304,121.4737,,", "SH0232,徐家汇店,,上海,121.4365,31.1954,,"))
    assert str(error) == ("line 3, latitude: 121.4365 is not a latitude (-90..90); "
                          "did you swap latitude and longitude?")


@pytest.mark.parametrize("row, line, column, words", [
    ("SH 0231,x,,,,,,", 3, "code", ["'SH 0231' contains a space", "1-20 characters", "A-Z, a-z, 0-9, '_' and '-'",
                                     "30-character `state`"]),
    ("上海0231,x,,,,,,", 3, "code", ["contains '上', '海'", "Chinese characters"]),
    ("SH0231.1,x,,,,,,", 3, "code", ["contains '.'"]),
    ("SHANGHAI_NANJINGXILU_0231,x,,,,,,", 3, "code", ["is 25 characters long", "1-20 characters", "`state`"]),
    ("1.23E+05,x,,,,,,", 3, "code", ["looks like a number Excel reformatted", "format the code column as Text"]),
    (",x,,,,,,", 3, "code", ["code is empty"]),
    ("SH0233,,,,,,,", 3, "name", ["name is empty"]),
    ("SH0233,x,,,95.5,121.4,,", 3, "latitude", ["95.5 is not a latitude (-90..90)"]),
    ("SH0233,x,,,31.2,181,,", 3, "longitude", ["181 is not a longitude (-180..180)"]),
    ("SH0233,x,,,31.2,,,", 3, "longitude", ["longitude is empty but latitude is set: give both or neither"]),
    ("SH0233,x,,,,121.4,,", 3, "latitude", ["latitude is empty but longitude is set: give both or neither"]),
    ("SH0233,x,,,31°12',121.4,,", 3, "latitude", ["'31°12'' is not a number in decimal degrees"]),
    ('SH0233,x,,,"31,2304",121.4,,', 3, "latitude", ["use a dot as the decimal separator"]),
    ("SH0233,x,,,nan,121.4,,", 3, "latitude", ["not a number in decimal degrees"]),
    ("SH0233,x,,,,,shut,", 3, "status", ["'shut' is not a status: use open or closed (营业 / 停业)"]),
    ("SH0231,dup,,,,,,", 3, "code", ["store code 'SH0231' is already on line 2"]),
    ("SH0233,x,,,,,,zhang wei", 3, "staff", ["'zhang wei' is not one userid: separate staff userids with ';' or '|'"]),
    ("SH0233,x,,,,,,张伟", 3, "staff", ["'张伟' is not a WeCom userid", "not the person's name"]),
    ("SH0233,x,,,,,,a,b", 3, None, ["this row has 9 cells but the header has 8 columns", "double quotes"]),
    ("SH0233," + "长" * 129 + ",,,,,,", 3, "name", ["is 129 characters long; at most 128"]),
])
def test_each_bad_cell_is_reported_at_its_line_and_column(row, line, column, words):
    result = parse_stores(sheet("SH0231,南京西路店,,上海,31.2304,121.4737,open,zhangwei", row))
    assert len(result.errors) == 1, "\n".join(map(str, result.errors))
    error = result.errors[0]
    assert (error.line, error.column) == (line, column), str(error)
    for word in words:
        assert word in error.message, str(error)
    assert [r.code for r in result.stores] == ["SH0231"], "the good row still parses"


def test_duplicate_code_is_reported_on_the_later_line_naming_the_first():
    result = parse_stores(sheet("SH01,a,,,,,,", "SH02,b,,,,,,", "SH01,c,,,,,,", "SH01,d,,,,,,"))
    assert [str(e) for e in result.errors] == [
        "line 4, code: store code 'SH01' is already on line 2; each store must be on one line",
        "line 5, code: store code 'SH01' is already on line 2; each store must be on one line",
    ]


def test_unknown_column_is_a_line_1_error_with_a_hint():
    result = parse_stores(sheet("SH01,a,,,31.2,121.4,,,x", header=HEADER + ",lat"))
    assert [str(e) for e in result.errors] == [
        f"line 1, lat: unknown column 'lat' (did you mean 'latitude'?); the columns are {HEADER}"]
    error = only_error("code,name,adress\nSH01,a,b\n")
    assert (error.line, error.column) == (1, "adress") and "did you mean 'address'?" in error.message


@pytest.mark.parametrize("header, missing", [("name,city", "code"), ("code,city", "name")])
def test_missing_required_header_column_is_a_line_1_error(header, missing):
    error = only_error(f"{header}\nx,y\n")
    assert str(error).startswith(f"line 1, {missing}: the header has no '{missing}' column (required)")


def test_latitude_column_without_longitude_column():
    error = only_error("code,name,latitude\nSH01,a,31.2\n")
    assert (error.line, error.column) == (1, "longitude") and "give both or neither" in error.message


def test_repeated_header_column():
    error = only_error("code,name,city,city\nSH01,a,上海,北京\n")
    assert str(error) == "line 1, city: column 'city' appears twice in the header"


@pytest.mark.parametrize("text, words", [
    ("", "the file is empty"),
    ("\nSH01,a\n", "line 1 is empty"),
    ("SH0231,南京西路店,,上海\n", "no header: the first line must be the header naming the columns: code,name"),
])
def test_missing_header(text, words):
    error = only_error(text)
    assert error.line == 1 and words in error.message


def test_a_value_under_a_column_with_no_header_name():
    error = only_error("code,name,,city\nSH01,a,oops,上海\n")
    assert str(error) == "line 2: 'oops' is in column 3, which has no name in the header"
    assert parse_stores("code,name,,city\nSH01,a,,上海\n").errors == [], "an empty unnamed column is fine"


def test_every_problem_in_a_file_is_reported_in_line_order():
    result = parse_stores(sheet("SH 1,,,,121.5,31.2,shut,a b", "SH02,ok,,,,,,", "SH02,again,,,,5,,"))
    assert [(e.line, e.column) for e in result.errors] == [
        (2, "code"), (2, "name"), (2, "latitude"), (2, "status"), (2, "staff"), (4, "code"), (4, "latitude")]


def test_unclosed_quote_is_a_clear_error():
    result = parse_stores(sheet("SH01,a,,,,,,", 'SH02,"b,,,,,,'))
    assert any(e.line == 3 and "not valid CSV" in e.message for e in result.errors), result.errors


# --------------------------------------------------------------------------------------------
# Encodings: Excel in China


def test_utf8_bom_is_handled():
    result = parse_stores(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))
    assert result.errors == [] and result.encoding == "utf-8-sig" and result.notes == []
    assert result.stores == parse_stores(GOOD).stores
    assert parse_stores("\ufeff" + GOOD).stores == parse_stores(GOOD).stores


def test_plain_utf8():
    result = parse_stores(GOOD.encode("utf-8"))
    assert result.errors == [] and result.encoding == "utf-8" and result.notes == []


@pytest.mark.parametrize("codec", ["gbk", "gb18030"])
def test_gbk_file_is_decoded_with_a_note(codec):
    result = parse_stores(GOOD.encode(codec))
    assert result.errors == [] and result.encoding == "gb18030"
    assert result.stores == parse_stores(GOOD).stores
    assert len(result.notes) == 1 and "not UTF-8" in result.notes[0] and "GBK/GB18030" in result.notes[0]
    assert "line 2" in result.notes[0]


def test_gbk_file_errors_keep_their_lines():
    error = only_error(sheet("SH0231,南京西路店,,上海,,,,", "SH0232,徐家汇店,,上海,,,营业中吗,").encode("gbk"))
    assert str(error).startswith("line 3, status: '营业中吗' is not a status")


def test_utf16_unicode_text_from_excel_is_read():
    text = GOOD.replace(",", "\t").replace('"北京市朝阳区建国门外大街1号\t 国贸商城B1"', "北京市朝阳区建国门外大街1号")
    result = parse_stores(text.encode("utf-16"))
    assert result.errors == [] and result.encoding == "utf-16" and len(result.stores) == 3


def test_an_excel_workbook_is_refused_with_what_to_do():
    error = only_error(b"PK\x03\x04\x14\x00\x06\x00binary")
    assert error.line == 1 and "Excel workbook, not CSV" in error.message and "CSV UTF-8" in error.message


def test_bytes_that_are_neither_utf8_nor_gbk():
    error = only_error(sheet("SH01,a,,,,,,").encode() + b"SH02,\xff\xff\xff\n")
    assert error.line == 3 and "neither UTF-8 nor GBK" in error.message


# --------------------------------------------------------------------------------------------
# Import and export (SQLite, and PostgreSQL when SCRM_TEST_POSTGRES_URL is set)


def stores_in(engine) -> dict[str, tuple]:
    with Session(engine) as session:
        staff: dict[str, list[str]] = {}
        for row in session.exec(select(StoreStaff).order_by(StoreStaff.userid)):
            staff.setdefault(row.store_code, []).append(row.userid)
        return {s.code: (s.name, s.address, s.city, s.latitude, s.longitude, s.status, staff.get(s.code, []))
                for s in session.exec(select(Store))}


def test_a_good_import_creates_stores_and_staff(engine):
    report = import_stores(engine, parse_stores(GOOD).stores)
    assert report == ImportReport(created=3, updated=0, unchanged=0, staff_added=4, staff_removed=0)
    assert stores_in(engine) == {
        "SH0231": ("瑞幸咖啡(南京西路店)", "上海市静安区南京西路1266号", "上海", 31.2304, 121.4737, "open",
                   ["lisi", "zhangwei"]),
        "SH0232": ("瑞幸咖啡(徐家汇店)", "上海市徐汇区漕溪北路88号", "上海", 31.1954, 121.4365, "open",
                   ["wangfang", "zhangwei"]),
        "BJ0101": ("瑞幸咖啡(国贸店)", "北京市朝阳区建国门外大街1号, 国贸商城B1", "北京", None, None, "closed", []),
    }


def test_reimport_updates_rows_and_replaces_the_staff_set(engine):
    import_stores(engine, parse_stores(GOOD).stores)
    with Session(engine) as session:
        session.add(Store(code="GZ0001", name="不在表里的店", city="广州"))
        session.commit()
    changed = f"""{HEADER}
SH0231,瑞幸咖啡(南京西路店),上海市静安区南京西路1266号,上海,31.2304,121.4737,open,lisi;zhangwei
SH0232,瑞幸咖啡(徐家汇店),上海市徐汇区漕溪北路88号,上海,31.1954,121.4365,closed,wangfang;chenjing
BJ0101,瑞幸咖啡(国贸店),北京市朝阳区建国门外大街1号,北京,39.9087,116.4605,open,
SZ0001,瑞幸咖啡(深圳湾店),,深圳,,,,liuyang
"""
    report = import_stores(engine, parse_stores(changed).stores)
    assert report == ImportReport(created=1, updated=2, unchanged=1, staff_added=2, staff_removed=1)
    after = stores_in(engine)
    assert after["SH0232"][5:] == ("closed", ["chenjing", "wangfang"]), "zhangwei removed, chenjing added"
    assert after["BJ0101"][1:6] == ("北京市朝阳区建国门外大街1号", "北京", 39.9087, 116.4605, "open")
    assert after["SZ0001"][5:] == ("open", ["liuyang"]), "a new store with no status opens"
    assert after["GZ0001"][0] == "不在表里的店", "stores not in the file are left alone"
    assert after["SH0231"][6] == ["lisi", "zhangwei"]

    again = import_stores(engine, parse_stores(changed).stores)
    assert again == ImportReport(created=0, updated=0, unchanged=4, staff_added=0, staff_removed=0)


def test_staff_change_alone_counts_as_an_update_and_bumps_updated_at(engine, monkeypatch):
    """The import's clock is set: a store whose staff changed gets the second import's time, one
    that did not change keeps the first's. Tried: the update not writing updated_at, and every
    row of the file bumped: both fail here (``updated_at >= before`` passed on the first)."""
    first, second = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC), dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
    clock = {"now": first}
    monkeypatch.setattr("scrm.stores.csvio.utcnow", lambda: clock["now"])
    import_stores(engine, parse_stores(sheet("SH01,a,,,,,,x1;x2", "SH02,b,,,,,,y1")).stores)
    clock["now"] = second
    report = import_stores(engine, parse_stores(sheet("SH01,a,,,,,,x1", "SH02,b,,,,,,y1")).stores)
    assert (report.updated, report.unchanged, report.staff_removed) == (1, 1, 1)

    def stamp(code):
        with Session(engine) as session:
            at = session.get(Store, code).updated_at
        return at if at.tzinfo else at.replace(tzinfo=dt.UTC)  # SQLite keeps it naive, in UTC

    assert stamp("SH01") == second, "the changed store's updated_at moved to the second import"
    assert stamp("SH02") == first, "the unchanged store kept its updated_at"


def test_columns_the_file_does_not_have_are_left_alone(engine):
    import_stores(engine, parse_stores(GOOD).stores)
    report = import_stores(engine, parse_stores("code,name\nSH0231,南京西路旗舰店\nBJ0101,瑞幸咖啡(国贸店)\n").stores)
    assert (report.updated, report.unchanged, report.staff_added, report.staff_removed) == (1, 1, 0, 0)
    after = stores_in(engine)
    assert after["SH0231"] == ("南京西路旗舰店", "上海市静安区南京西路1266号", "上海", 31.2304, 121.4737, "open",
                               ["lisi", "zhangwei"]), "staff, address, coordinates, status kept"
    assert after["BJ0101"][5] == "closed"


def test_an_empty_status_never_reopens_a_closed_store(engine):
    import_stores(engine, parse_stores(GOOD).stores)
    import_stores(engine, parse_stores(sheet("BJ0101,瑞幸咖啡(国贸店),,北京,,,,")).stores)
    assert stores_in(engine)["BJ0101"][5] == "closed"


def test_dry_run_reports_and_writes_nothing(engine):
    report = import_stores(engine, parse_stores(GOOD).stores, dry_run=True)
    assert report == ImportReport(created=3, staff_added=4, dry_run=True)
    assert stores_in(engine) == {}


def test_import_refuses_duplicate_codes_before_writing(engine):
    row = StoreRow(code="SH01", name="a")
    with pytest.raises(ValueError, match="twice"):
        import_stores(engine, [StoreRow(code="SH00", name="z"), row, row])
    assert stores_in(engine) == {}


def test_export_then_parse_is_identical_and_reimports_unchanged(engine):
    rows = parse_stores(GOOD).stores
    import_stores(engine, rows)
    exported = export_stores(engine)
    assert exported.splitlines()[0] == HEADER
    assert [line.split(",")[0] for line in exported.splitlines()[1:]] == ["BJ0101", "SH0231", "SH0232"]
    assert "zhangwei;lisi" not in exported and "lisi;zhangwei" in exported, "staff sorted, joined with ;"
    again = parse_stores(exported)
    assert again.errors == []
    assert again.stores == sorted(rows, key=lambda r: r.code)
    assert import_stores(engine, again.stores) == ImportReport(unchanged=3)
    assert export_stores(engine) == exported


def test_export_round_trips_awkward_values(engine):
    awkward = [
        StoreRow(code="A-1", name='店名带"引号",和逗号', address="第一行\n第二行", city="上海",
                 latitude=-33.868820000000004, longitude=151.20929, status="open", staff=["a@b.c", "z_1"]),
        StoreRow(code="a_2", name="名", address="", city="", latitude=0.0, longitude=-0.1, status="closed"),
    ]
    import_stores(engine, awkward)
    again = parse_stores(export_stores(engine))
    assert again.errors == [] and again.stores == sorted(awkward, key=lambda r: r.code)


def test_ten_thousand_stores_import_in_one_go(engine):
    rows = [f"S{i:05d},门店{i},地址{i}号,城市{i % 50},{20 + i / 1000:.4f},{100 + i / 500:.4f},open,u{i};v{i}"
            for i in range(10_000)]
    result = parse_stores(sheet(*rows))
    assert result.errors == [] and len(result.stores) == 10_000
    started = time.monotonic()
    report = import_stores(engine, result.stores)
    took = time.monotonic() - started
    assert (report.created, report.staff_added) == (10_000, 20_000)
    assert took < 30, f"10k stores took {took:.1f}s"
    started = time.monotonic()
    assert import_stores(engine, result.stores).unchanged == 10_000
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------------------------
# The CLI


runner = CliRunner()


@pytest.fixture
def db(monkeypatch, tmp_path):
    """scrm's settings pointed at a fresh, migrated SQLite database; yields its engine."""
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines, get_engine, migrate

    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    migrate(url)
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    reset_settings_cache()
    yield get_engine(url)
    dispose_engines()
    reset_settings_cache()


def write(tmp_path, text: str | bytes, name: str = "stores.csv"):
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_cli_import_with_errors_prints_each_at_file_line_exits_1_and_imports_nothing(db, tmp_path):
    import_stores(db, parse_stores(GOOD).stores)
    before = stores_in(db)
    path = write(tmp_path, sheet("SH0231,改名了,,上海,31.2304,121.4737,open,",
                                 "SH0232,徐家汇店,,上海,121.4365,31.1954,,", "SH 9,新店,,,,,,"))
    result = runner.invoke(stores_app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"{path}:3: latitude: 121.4365 is not a latitude (-90..90); did you swap latitude and longitude?",
        f"{path}:4: code: 'SH 9' contains a space: a store code is 1-20 characters from A-Z, a-z, 0-9, '_' and '-' "
        "(no spaces, dots or Chinese characters), because it travels inside the 30-character `state` of the "
        "store's WeCom QR codes",
        f"2 problems in {path}; nothing imported",
    ]
    assert stores_in(db) == before, "the good row was not imported either"


def test_cli_import_creates_then_reports_changes(db, tmp_path):
    path = write(tmp_path, GOOD)
    result = runner.invoke(stores_app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "created 3, updated 0, unchanged 0 (3 stores in the file)" in result.output
    assert "staff: 4 added, 0 removed" in result.output
    path = write(tmp_path, GOOD.replace("zhangwei;lisi", "lisi"))
    result = runner.invoke(stores_app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "created 0, updated 1, unchanged 2" in result.output and "staff: 0 added, 1 removed" in result.output
    assert stores_in(db)["SH0231"][6] == ["lisi"]


def test_cli_import_dry_run_writes_nothing(db, tmp_path):
    result = runner.invoke(stores_app, ["import", str(write(tmp_path, GOOD)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run, nothing written: would have created 3" in result.output
    assert stores_in(db) == {}


def test_cli_import_of_a_gbk_file_says_so(db, tmp_path):
    path = write(tmp_path, GOOD.encode("gbk"))
    result = runner.invoke(stores_app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"note: {path}: the file is not UTF-8")
    assert "GBK/GB18030" in result.output and "created 3" in result.output
    assert stores_in(db)["SH0231"][0] == "瑞幸咖啡(南京西路店)"


def test_cli_import_warns_about_staff_that_are_not_synced_employees(db, tmp_path):
    from scrm.contacts.models import Employee

    with Session(db) as session:
        session.add_all([Employee(userid="zhangwei"), Employee(userid="lisi")])
        session.commit()
    result = runner.invoke(stores_app, ["import", str(write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert "warning: 1 staff userid not among the synced employees: wangfang" in result.output


def test_cli_import_missing_file_exits_2(db, tmp_path):
    result = runner.invoke(stores_app, ["import", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_without_a_schema_exits_2_with_a_hint(monkeypatch, tmp_path):
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines

    monkeypatch.setenv("SCRM_DATABASE__URL", f"sqlite:///{tmp_path / 'empty.db'}")
    reset_settings_cache()
    try:
        result = runner.invoke(stores_app, ["list"])
        assert result.exit_code == 2, result.output
        assert "database error" in result.output and "scrm init" in result.output
    finally:
        dispose_engines()
        reset_settings_cache()


def test_cli_export_to_stdout_and_to_a_file_with_bom_round_trips(db, tmp_path):
    import_stores(db, parse_stores(GOOD).stores)
    result = runner.invoke(stores_app, ["export"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == export_stores(db).encode("utf-8")
    path = tmp_path / "out.csv"
    result = runner.invoke(stores_app, ["export", str(path)])
    assert result.exit_code == 0 and "exported 3 stores to" in result.output, result.output
    assert path.read_bytes().startswith(b"\xef\xbb\xbfcode,name,")
    result = runner.invoke(stores_app, ["import", str(path)])
    assert result.exit_code == 0 and "created 0, updated 0, unchanged 3" in result.output, result.output
    runner.invoke(stores_app, ["export", str(path), "--no-bom"])
    assert path.read_bytes().startswith(b"code,name,")


def test_cli_list_shows_staff_and_active_group_counts(db):
    from scrm.groups.models import CustomerGroup

    import_stores(db, parse_stores(GOOD).stores)
    with Session(db) as session:
        session.add_all([
            CustomerGroup(chat_id="wr1", name="南京西路1群", store_code="SH0231"),
            CustomerGroup(chat_id="wr2", name="南京西路2群", store_code="SH0231"),
            CustomerGroup(chat_id="wr3", name="旧群", store_code="SH0231", status="dismissed"),
            CustomerGroup(chat_id="wr4", name="徐家汇1群", store_code="SH0232"),
        ])
        session.commit()
    result = runner.invoke(stores_app, ["list"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 stores\n")
    assert table_rows(result.output) == [
        ["code", "name", "city", "status", "staff", "groups"],
        ["BJ0101", "瑞幸咖啡(国贸店)", "北京", "closed", "0", "0"],
        ["SH0231", "瑞幸咖啡(南京西路店)", "上海", "open", "2", "2"],
        ["SH0232", "瑞幸咖啡(徐家汇店)", "上海", "open", "2", "1"],
    ]
    assert "more" not in result.output


def table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's header and body lines."""
    return [[cell.strip() for cell in line.strip("│┃ ").replace("┃", "│").split("│")]
            for line in output.splitlines() if line.startswith(("│", "┃"))]


def test_cli_list_filters_by_city_and_caps_with_limit(db):
    rows = [f"SH{i:03d},店{i},,上海,,,," for i in range(7)]
    import_stores(db, parse_stores(sheet(*rows, "BJ001,国贸,,北京,,,,")).stores)
    result = runner.invoke(stores_app, ["list", "--city", "上海", "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "7 stores in 上海" in result.output and "BJ001" not in result.output
    assert "SH004" in result.output and "SH005" not in result.output
    assert result.output.rstrip().endswith("… and 2 more (--limit 0 shows all)")
    result = runner.invoke(stores_app, ["list", "--city", "上海", "--limit", "0"])
    assert "SH006" in result.output and "more" not in result.output
    result = runner.invoke(stores_app, ["list", "--city", "杭州"])
    assert result.exit_code == 0 and "no stores in city '杭州'; cities: 上海, 北京" in result.output

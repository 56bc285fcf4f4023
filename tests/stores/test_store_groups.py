"""Putting customer groups on stores (`scrm stores groups`), on SQLite and PostgreSQL.

The seeded corp: two open stores and a closed one; groups without a store, on a store, and a
dismissed one. Each refused request must name every problem at once and write nothing; every
accepted one run twice must change nothing the second time.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlmodel import Session
from typer.testing import CliRunner

from scrm.contacts.models import Employee
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.stores.cli import stores_app
from scrm.stores.groups import (
    AssignmentRow,
    GroupAssignmentError,
    GroupChange,
    UnknownStoreError,
    assign_groups,
    detach_groups,
    export_assignments,
    import_assignments,
    list_store_groups,
    parse_assignments,
)
from scrm.stores.models import Store, StoreStatus

LIST_HINT = "(run `scrm stores groups list --unassigned` to see chat ids)"


def seed(engine) -> None:
    with Session(engine) as s:
        s.add_all([
            Store(code="SH0231", name="南京西路店"),
            Store(code="SH0232", name="徐家汇店"),
            Store(code="BJ0101", name="国贸店", status=StoreStatus.closed),
            Employee(userid="zhangwei", name="张伟"),
            CustomerGroup(chat_id="wrA", name="南京西路1群", owner_userid="zhangwei"),
            CustomerGroup(chat_id="wrB", name="徐家汇1群", owner_userid="lisi", store_code="SH0232"),
            CustomerGroup(chat_id="wrC", name="南京西路2群", owner_userid="zhangwei", store_code="SH0231"),
            CustomerGroup(chat_id="wrOld", name="旧群", status=GroupStatus.dismissed),
            GroupMember(chat_id="wrA", member_id="zhangwei", member_type=1),
            GroupMember(chat_id="wrA", member_id="wmCustomer1"),
            GroupMember(chat_id="wrA", member_id="wmCustomer2", state=MemberState.left),
            GroupMember(chat_id="wrC", member_id="wmCustomer1"),
        ])
        s.commit()


def stores_of(engine) -> dict[str, str | None]:
    g = CustomerGroup.__table__
    with engine.connect() as conn:
        return dict(conn.execute(select(g.c.chat_id, g.c.store_code)).all())


SEEDED = {"wrA": None, "wrB": "SH0232", "wrC": "SH0231", "wrOld": None}


@pytest.fixture
def corp(engine):
    seed(engine)
    assert stores_of(engine) == SEEDED
    return engine


# --------------------------------------------------------------------------------------------
# assign / detach


def test_assign_adds_moves_and_keeps_counting_repeats_once(corp):
    report = assign_groups(corp, "SH0231", ["wrA", "wrB", "wrC", " wrA "])
    assert report.assigned == [GroupChange("wrA", "南京西路1群", None, "SH0231")]
    assert report.moved == [GroupChange("wrB", "徐家汇1群", "SH0232", "SH0231")]
    assert report.unchanged == [GroupChange("wrC", "南京西路2群", "SH0231", "SH0231")]
    assert (report.store_code, report.store_name) == ("SH0231", "南京西路店")
    assert report.stores_to_refresh == ["SH0231", "SH0232"], "the store that lost a group needs its QR code too"
    assert stores_of(corp) == {**SEEDED, "wrA": "SH0231", "wrB": "SH0231"}

    again = assign_groups(corp, "SH0231", ["wrA", "wrB", "wrC"])
    assert (again.assigned, again.moved, len(again.unchanged), again.stores_to_refresh) == ([], [], 3, [])


def test_assign_refuses_naming_every_problem_and_writes_nothing(corp):
    with pytest.raises(GroupAssignmentError) as refused:
        assign_groups(corp, "BJ0101", ["wrA", "wrOld", "南京西路2群", "wrGone", "wrB"])
    assert [(p.chat_id, p.message) for p in refused.value.problems] == [
        (None, "store 'BJ0101' (国贸店) is closed: groups can only be added to an open store "
               "(reopen it with status=open in `scrm stores import`)"),
        ("wrOld", "group wrOld (旧群) is dismissed: only active groups can be added to a store"),
        ("南京西路2群", "'南京西路2群' is a group name, not a chat id: its chat id is wrC"),
        ("wrGone", f"no customer group with chat id 'wrGone' {LIST_HINT}"),
    ]
    assert stores_of(corp) == SEEDED

    with pytest.raises(GroupAssignmentError) as refused:
        assign_groups(corp, "NOPE", ["wrA"])
    assert [str(p) for p in refused.value.problems] == ["no store 'NOPE' (see `scrm stores list`)"]
    assert stores_of(corp) == SEEDED


def test_assign_dry_run_reports_the_same_and_writes_nothing(corp):
    report = assign_groups(corp, "SH0231", ["wrA", "wrB"], dry_run=True)
    assert report.dry_run and [c.chat_id for c in report.assigned] == ["wrA"]
    assert [c.chat_id for c in report.moved] == ["wrB"]
    assert stores_of(corp) == SEEDED


def test_detach_takes_groups_off_their_stores_and_refuses_unknown_ones(corp):
    with pytest.raises(GroupAssignmentError) as refused:
        detach_groups(corp, ["wrB", "wrGone"])
    assert [p.chat_id for p in refused.value.problems] == ["wrGone"]
    assert stores_of(corp) == SEEDED, "wrB stays on its store: all or nothing"

    report = detach_groups(corp, ["wrB", "wrA", "wrB"])
    assert report.detached == [GroupChange("wrB", "徐家汇1群", "SH0232", None)]
    assert [c.chat_id for c in report.unchanged] == ["wrA"]
    assert report.stores_to_refresh == ["SH0232"]
    assert stores_of(corp) == {**SEEDED, "wrB": None}
    assert detach_groups(corp, ["wrB"]).detached == []


# --------------------------------------------------------------------------------------------
# list


def test_list_shows_owner_current_members_and_store(corp):
    listing = list_store_groups(corp)
    assert listing.total == 4
    rows = {r.chat_id: r for r in listing}
    assert [r.chat_id for r in listing] == ["wrA", "wrOld", "wrC", "wrB"], "no store first, active first, by store"
    a = rows["wrA"]
    assert (a.name, a.owner_userid, a.owner_name, a.members, a.store_code, a.store_name, a.status) == (
        "南京西路1群", "zhangwei", "张伟", 2, None, None, "active")  # the member who left is not counted
    assert (rows["wrB"].owner_name, rows["wrB"].store_name, rows["wrB"].members) == ("", "徐家汇店", 0)
    assert rows["wrOld"].status == "dismissed"


def test_list_filters_by_store_or_unassigned_and_limits(corp):
    assert [r.chat_id for r in list_store_groups(corp, "SH0231")] == ["wrC"]
    assert [r.chat_id for r in list_store_groups(corp, unassigned=True)] == ["wrA"], "not the dismissed one"
    assert list_store_groups(corp, "BJ0101").total == 0
    with pytest.raises(UnknownStoreError, match="no store 'NOPE'"):
        list_store_groups(corp, "NOPE")
    page = list_store_groups(corp, limit=2)
    assert (len(page), page.total) == (2, 4)


# --------------------------------------------------------------------------------------------
# the CSV file


def test_parse_reads_excel_utf8_with_bom_any_column_order_and_empty_store_as_detach():
    data = "\ufeffStore_Code,CHAT_ID,群名\r\nSH0231,wrA,南京西路1群\r\n,wrB,徐家汇1群\r\n,,\r\n\r\n".encode("utf-8")
    result = parse_assignments(data)
    assert result.errors == [] and result.encoding == "utf-8-sig"
    assert result.rows == [AssignmentRow("wrA", "SH0231"), AssignmentRow("wrB", None)]
    assert [r.line for r in result.rows] == [2, 3]
    assert result.notes == ["not imported, for the reader only: column 群名"]


def test_parse_reads_a_gbk_file_from_excel_on_chinese_windows_and_says_so():
    result = parse_assignments("chat_id,store_code,群名\nwrA,SH0231,南京西路1群\n".encode("gbk"))
    assert result.errors == [] and result.rows == [AssignmentRow("wrA", "SH0231")]
    assert result.encoding == "gb18030" and "GBK/GB18030" in result.notes[0]


def test_parse_reports_every_bad_line_with_its_column():
    result = parse_assignments("chat_id,store_code\nwrA,SH0231\n,SH0231\nwrB,SH 02\nwrA,SH0232\nwrA,SH0231\n")
    assert [str(e) for e in result.errors] == [
        f"line 3, chat_id: chat_id is empty: every line names one group by its chat id {LIST_HINT}",
        "line 4, store_code: 'SH 02' contains a space: a store code is 1-20 characters from A-Z, a-z, 0-9, '_' "
        "and '-' (no spaces, dots or Chinese characters), because it travels inside the 30-character `state` of "
        "the store's WeCom QR codes",
        "line 5, chat_id: group 'wrA' is already on line 2 with store 'SH0231', here with store 'SH0232': "
        "keep one of the lines",
    ]
    assert result.rows == [AssignmentRow("wrA", "SH0231")], "the same line twice is harmless"


@pytest.mark.parametrize("header, message", [
    ("", "the file is empty: the first line must be the header naming the columns: chat_id,store_code"),
    ("wrA,SH0231", "no header: the first line must be the header naming the columns: chat_id,store_code "
                   "(found 'wrA,SH0231')"),
    ("群名,store_code", "the header has no 'chat_id' column (required) ('群名' looks like a column of group names; "
                       "this file needs each group's chat id in a 'chat_id' column: run `scrm stores groups list "
                       "--unassigned` to see chat ids); the first line must be the header naming the columns: "
                       "chat_id,store_code"),
    ("chat_id,门店编码", "the header has no 'store_code' column (required) (did you mean 'store_code' instead of "
                        "'门店编码'?); the first line must be the header naming the columns: chat_id,store_code"),
])
def test_parse_explains_a_missing_or_wrong_header(header, message):
    result = parse_assignments(header + "\nwrA,SH0231\n" if header else "")
    assert [e.message for e in result.errors] == [message] and result.rows == []
    assert all(e.line == 1 for e in result.errors)


def test_import_assigns_moves_detaches_and_reimports_unchanged(corp):
    rows = parse_assignments("chat_id,store_code\nwrA,SH0231\nwrB,SH0231\nwrC,\nwrOld,\n").rows
    report = import_assignments(corp, rows)
    assert [c.chat_id for c in report.assigned] == ["wrA"]
    assert report.moved == [GroupChange("wrB", "徐家汇1群", "SH0232", "SH0231")]
    assert report.detached == [GroupChange("wrC", "南京西路2群", "SH0231", None)]
    assert [c.chat_id for c in report.unchanged] == ["wrOld"]
    assert stores_of(corp) == {"wrA": "SH0231", "wrB": "SH0231", "wrC": None, "wrOld": None}
    again = import_assignments(corp, rows)
    assert (again.changes, len(again.unchanged)) == ([], 4)


def test_import_refuses_the_whole_file_naming_each_line(corp):
    rows = parse_assignments("chat_id,store_code\nwrA,SH0231\n南京西路1群,SH0231\nwrOld,SH0231\n"
                             "wrB,BJ0101\nwrC,NOPE\nwrGone,\n").rows
    with pytest.raises(GroupAssignmentError) as refused:
        import_assignments(corp, rows)
    assert [p.located("groups.csv") for p in refused.value.problems] == [
        "groups.csv:3: chat_id: '南京西路1群' is a group name, not a chat id: its chat id is wrA",
        "groups.csv:4: chat_id: group wrOld (旧群) is dismissed: only active groups can be added to a store",
        "groups.csv:5: store_code: store 'BJ0101' (国贸店) is closed: groups can only be added to an open store "
        "(reopen it with status=open in `scrm stores import`)",
        "groups.csv:6: store_code: no store 'NOPE' (see `scrm stores list`)",
        f"groups.csv:7: chat_id: no customer group with chat id 'wrGone' {LIST_HINT}",
    ]
    assert stores_of(corp) == SEEDED, "the good line 2 was not imported either"


def test_a_kept_sheet_reimports_after_its_group_was_dismissed_and_store_closed(corp):
    rows = parse_assignments("chat_id,store_code\nwrC,SH0231\n").rows
    with Session(corp) as s:
        s.get(CustomerGroup, "wrC").status = "dismissed"
        s.get(Store, "SH0231").status = "closed"
        s.commit()
    report = import_assignments(corp, rows)
    assert (report.changes, [c.chat_id for c in report.unchanged]) == ([], ["wrC"])


def test_export_lists_groups_for_excel_and_imports_back_unchanged(corp):
    text = export_assignments(corp)
    assert text.splitlines() == [
        "chat_id,store_code,name,owner,members,status",
        "wrA,,南京西路1群,张伟 (zhangwei),2,active",
        "wrOld,,旧群,,0,dismissed",
        "wrC,SH0231,南京西路2群,张伟 (zhangwei),1,active",
        "wrB,SH0232,徐家汇1群,lisi,0,active",
    ]
    parsed = parse_assignments(text)
    assert parsed.errors == []
    report = import_assignments(corp, parsed.rows)
    assert (report.changes, len(report.unchanged)) == ([], 4)
    assert export_assignments(corp, unassigned=True).splitlines()[1:] == ["wrA,,南京西路1群,张伟 (zhangwei),2,active"]


# --------------------------------------------------------------------------------------------
# The CLI


runner = CliRunner()


@pytest.fixture
def db(monkeypatch, tmp_path):
    """The seeded corp in a fresh SQLite database that scrm's settings point at."""
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines, get_engine, migrate

    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    migrate(url)
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("SCRM_ROUTING__REFRESH_INTERVAL_SECONDS", "300")
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    engine = get_engine(url)
    seed(engine)
    yield engine
    dispose_engines()
    reset_settings_cache()


def groups(*args: str):
    return runner.invoke(stores_app, ["groups", *args])


def table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("│┃ ").replace("┃", "│").split("│")]
            for line in output.splitlines() if line.startswith(("│", "┃"))]


def test_cli_assign_prints_what_changed_and_the_next_step(db):
    result = groups("assign", "SH0231", "wrA", "wrB", "wrC")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "assigned 2 groups to SH0231 (南京西路店): 1 added, 1 moved, 1 unchanged",
        "  wrB (徐家汇1群): SH0232 → SH0231",
        "next: refresh the group QR codes with `scrm stores codes --store SH0231 --store SH0232` "
        "(a running scheduler, `scrm run` or `scrm scheduler`, does it within 5 minutes)",
    ]
    again = groups("assign", "SH0231", "wrA", "wrB")
    assert again.output.splitlines() == ["assigned 0 groups to SH0231 (南京西路店): 0 added, 0 moved, 2 unchanged"]


def test_cli_assign_dry_run_says_so_and_writes_nothing(db):
    result = groups("assign", "SH0231", "wrA", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "dry run, nothing written: would have assigned 1 group to SH0231 (南京西路店): 1 added, 0 moved, 0 unchanged"]
    assert stores_of(db) == SEEDED


def test_cli_assign_refused_lists_every_problem_and_exits_1(db):
    result = groups("assign", "NOPE", "wrA", "旧群", "wrOld")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "error: no store 'NOPE' (see `scrm stores list`)",
        "error: '旧群' is a group name, not a chat id: its chat id is wrOld",
        "error: group wrOld (旧群) is dismissed: only active groups can be added to a store",
        "3 problems; nothing assigned",
    ]
    assert stores_of(db) == SEEDED


def test_cli_detach(db):
    result = groups("detach", "wrB", "wrA")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "detached 1 group, 1 unchanged (had no store)",
        "  wrB (徐家汇1群): SH0232 → no store",
        "next: refresh the group QR codes with `scrm stores codes --store SH0232` "
        "(a running scheduler, `scrm run` or `scrm scheduler`, does it within 5 minutes)",
    ]
    result = groups("detach", "wrGone")
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"error: no customer group with chat id 'wrGone' {LIST_HINT}",
                                          "1 problem; nothing detached"]


def test_cli_list_is_a_table_with_chinese_names(db):
    result = groups("list")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("4 groups\n")
    assert table_rows(result.output) == [
        ["chat_id", "name", "owner", "members", "store", "status"],
        ["wrA", "南京西路1群", "张伟 (zhangwei)", "2", "-", "active"],
        ["wrOld", "旧群", "", "0", "-", "dismissed"],
        ["wrC", "南京西路2群", "张伟 (zhangwei)", "1", "SH0231 南京西路店", "active"],
        ["wrB", "徐家汇1群", "lisi", "0", "SH0232 徐家汇店", "active"],
    ]
    result = groups("list", "--unassigned")
    assert result.output.startswith("1 unassigned group\n") and [r[0] for r in table_rows(result.output)] == [
        "chat_id", "wrA"]
    result = groups("list", "--limit", "1")
    assert result.output.rstrip().endswith("… and 3 more (--limit 0 shows all)")


def test_cli_list_of_a_store_without_groups_or_unknown(db):
    result = groups("list", "--store", "BJ0101")
    assert result.exit_code == 0
    assert result.output == ("store BJ0101 has no groups yet: "
                             "add some with `scrm stores groups assign BJ0101 CHAT_ID…`\n")
    result = groups("list", "--store", "NOPE")
    assert result.exit_code == 2 and result.output == "error: no store 'NOPE' (see `scrm stores list`)\n"


def test_cli_import_refused_prints_file_lines_and_exits_1(db, tmp_path):
    path = tmp_path / "groups.csv"
    path.write_text("chat_id,store_code\nwrA,SH0231\n,SH0231\nwrGone,SH0231\n", encoding="utf-8")
    result = groups("import", str(path))
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"{path}:3: chat_id: chat_id is empty: every line names one group by its chat id {LIST_HINT}",
        f"1 problem in {path}; nothing imported",
    ]
    path.write_text("chat_id,store_code\nwrA,SH0231\nwrGone,SH0231\nwrB,BJ0101\n", encoding="utf-8")
    result = groups("import", str(path))
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"{path}:3: chat_id: no customer group with chat id 'wrGone' {LIST_HINT}",
        f"{path}:4: store_code: store 'BJ0101' (国贸店) is closed: groups can only be added to an open store "
        "(reopen it with status=open in `scrm stores import`)",
        f"2 problems in {path}; nothing imported",
    ]
    assert stores_of(db) == SEEDED


def test_cli_export_then_import_a_filled_in_sheet(db, tmp_path):
    path = tmp_path / "groups.csv"
    result = groups("export", str(path), "--unassigned")
    assert result.exit_code == 0 and result.output == f"exported 1 group to {path}\n", result.output
    assert path.read_bytes().startswith(b"\xef\xbb\xbfchat_id,store_code,")
    path.write_bytes(path.read_bytes().replace(b"wrA,,", b"wrA,SH0232,"))  # filled in in Excel
    result = groups("import", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"note: {path}: not imported, for the reader only: columns name, owner, members, status",
        "assigned 1, moved 0, detached 0, unchanged 0 (1 group in the file)",
        "  wrA (南京西路1群): no store → SH0232",
        "next: refresh the group QR codes with `scrm stores codes --store SH0232` "
        "(a running scheduler, `scrm run` or `scrm scheduler`, does it within 5 minutes)",
    ]
    result = groups("import", str(path))
    assert result.output.splitlines()[1] == "assigned 0, moved 0, detached 0, unchanged 1 (1 group in the file)"
    assert "next:" not in result.output


def test_cli_without_a_schema_exits_2_with_a_hint(monkeypatch, tmp_path):
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines

    monkeypatch.setenv("SCRM_DATABASE__URL", f"sqlite:///{tmp_path / 'empty.db'}")
    reset_settings_cache()
    try:
        result = groups("assign", "SH0231", "wrA")
        assert result.exit_code == 2, result.output
        assert "database error" in result.output and "scrm init" in result.output
    finally:
        dispose_engines()
        reset_settings_cache()


def test_cli_is_reachable_as_scrm_stores_groups():
    from scrm.cli import app

    result = runner.invoke(app, ["stores", "groups", "--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("assign", "detach", "list", "import", "export"))

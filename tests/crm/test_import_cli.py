"""`scrm crm import chats|calls|sms FILE` and `scrm crm link` as an operator types them (SQLite, the
shipped samples). Mutations tried are named in each docstring."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from scrm.config import reset_settings_cache
from scrm.crm import service
from scrm.crm.service import RebuildReport
from scrm.db import dispose_engines, make_engine, migrate
from tests.crm.conftest import CHEN, GUEST, LIU, SAMPLES, add_people, add_sample_people


@pytest.fixture
def cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    add_sample_people(engine)
    from scrm.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, ["crm", *args])

    yield run, engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


@pytest.fixture
def rebuilds(monkeypatch):
    """What the import asks the record builder to rebuild (the builder itself is tested elsewhere)."""
    calls: list[dict] = []

    def fake(engine, ids, *, now, settings, tz, rules_dir=None):
        calls.append({"ids": list(ids), "tz": tz, "gap": settings.session_gap_hours, "now": now})
        return RebuildReport(customers=len(calls[-1]["ids"]), records=7, created=7)

    monkeypatch.setattr(service, "rebuild_customers", fake)
    return calls


def test_importing_the_samples_prints_a_summary_and_rebuilds_the_touched_customers(cli, rebuilds):
    """Tried: rebuilding every customer given to the import rather than those whose messages changed
    (the re-import asked for a rebuild)."""
    run, _ = cli
    out = run("import", "chats", str(SAMPLES / "chats.jsonl"))
    assert out.exit_code == 0, out.output
    assert ("chats.jsonl: read 26, created 25, unchanged 0, revoked 1, skipped 1, unmatched 0, refused 0; "
            "3 customers changed") in out.output
    assert "rebuilt the records of 3 customers: 7 records (7 new, 0 removed)" in out.output
    assert rebuilds[0]["ids"] == sorted([LIU, CHEN, GUEST]) and rebuilds[0]["tz"] == ZoneInfo("Asia/Shanghai")
    assert rebuilds[0]["gap"] == 8.0
    calls = run("import", "calls", str(SAMPLES / "calls.csv"))
    assert calls.exit_code == 0 and "read 5, created 5" in calls.output and "unmatched 1" in calls.output
    sms = run("import", "sms", str(SAMPLES / "sms.csv"))
    assert sms.exit_code == 0 and "read 3, created 3" in sms.output
    assert [c["ids"] for c in rebuilds[1:]] == [sorted([LIU, CHEN])] * 2
    again = run("import", "chats", str(SAMPLES / "chats.jsonl"))
    assert again.exit_code == 0 and "created 0, unchanged 25" in again.output and len(rebuilds) == 3


def test_output_is_plain_lines_when_not_a_terminal(cli, rebuilds):
    """No progress bar, cursor codes or carriage returns in a log or a pipe. Tried: a Progress that
    is not disabled off a terminal (it left a blank line behind)."""
    run, _ = cli
    out = run("import", "chats", str(SAMPLES / "chats.jsonl"))
    assert out.exit_code == 0
    assert "\r" not in out.output and "\x1b" not in out.output and "━" not in out.output
    lines = [line for line in out.output.splitlines() if "crm_imported" not in line]
    assert lines and all(line.strip() for line in lines), out.output


def test_refused_lines_are_listed_with_file_and_line_first_20_and_exit_1(cli, rebuilds, tmp_path):
    """Tried: exit 0 with problems (the exit code check failed) and printing every problem (the
    25th line was shown)."""
    run, _ = cli
    good = json.dumps({"msgid": "ok1", "action": "send", "from": LIU, "tolist": ["sales_zhang"], "roomid": "",
                       "msgtime": 1_794_189_720_000, "msgtype": "text", "text": {"content": "在吗"}})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + "\n".join(f"broken {i}" for i in range(25)) + "\n", encoding="utf-8")
    out = run("import", "chats", str(path))
    assert out.exit_code == 1
    assert f"{path}:2: not JSON" in out.output and f"{path}:21: not JSON" in out.output
    assert f"{path}:22:" not in out.output and "... and 5 more refused line(s)" in out.output
    assert "created 1" in out.output and "refused 25" in out.output
    assert rebuilds[0]["ids"] == [LIU]  # what was imported is still rebuilt


def test_no_rebuild_only_stores_and_refused_rules_are_said_plainly(cli, monkeypatch, tmp_path):
    """Tried: calling the rebuild with --no-rebuild (the builder was asked); not catching RulesError
    (the test failed: a traceback instead of the one line)."""
    run, engine = cli
    asked: list = []
    real = service.rebuild_customers
    monkeypatch.setattr(service, "rebuild_customers", lambda *a, **k: asked.append(a))
    out = run("import", "sms", str(SAMPLES / "sms.csv"), "--no-rebuild")
    assert out.exit_code == 0 and asked == [] and "rebuilt" not in out.output

    monkeypatch.setattr(service, "rebuild_customers", real)  # the real builder, with rules that do not load
    broken = tmp_path / "broken-rules"
    broken.mkdir()
    (broken / "rules.yaml").write_text("facts:\n  - id: price\n    kind: price\n    regex: '(a+)+'\n")
    monkeypatch.setenv("SCRM_CRM__RULES_DIR", str(broken))
    reset_settings_cache()
    out = run("import", "calls", str(SAMPLES / "calls.csv"))
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), out.output  # fail(): one line, exit 2
    text = " ".join(out.output.split())
    assert "the messages are stored, but the records of 2 customers were not rebuilt" in text, text
    assert "scrm crm rules lint" in text and "Traceback" not in out.output
    with engine.connect() as conn:  # the calls are stored all the same
        from sqlalchemy import func, select

        from scrm.crm.models import CrmMessage
        assert conn.execute(select(func.count()).where(CrmMessage.__table__.c.channel == "call")).scalar() == 5


def test_a_missing_file_or_a_bad_header_is_one_clear_line(cli, rebuilds, tmp_path):
    run, _ = cli
    missing = run("import", "calls", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2 and "cannot read" in missing.output and "Traceback" not in missing.output
    bad = tmp_path / "calls.csv"
    bad.write_text("id,phone\n1,2\n", encoding="utf-8")
    out = run("import", "calls", str(bad))
    assert out.exit_code == 1 and f"{bad}:1: unknown column(s) 'id', 'phone'" in out.output


def test_link_attaches_calls_once_the_mobile_is_known(cli, rebuilds):
    run, engine = cli
    assert run("import", "calls", str(SAMPLES / "calls.csv"), "--no-rebuild").exit_code == 0
    add_people(engine, customers=[("wmCrmSampleWangFang0004", "王芳", "sales_li", ["13700137000"])])
    out = run("link")
    assert out.exit_code == 0 and "linked messages to 1 customer" in out.output
    assert rebuilds[-1]["ids"] == ["wmCrmSampleWangFang0004"]

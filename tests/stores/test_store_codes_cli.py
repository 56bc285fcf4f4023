"""`scrm stores codes` against a live sandbox server: codes are created once, kept, and their
state names the store."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from scrm.config import reset_settings_cache
from scrm.db import dispose_engines, make_engine, migrate
from scrm.groups.models import CustomerGroup
from scrm.sandbox import Sandbox, serve
from scrm.stores.models import Store, StoreCode, StoreStaff


@pytest.fixture
def env(tmp_path, monkeypatch, redis_url):
    sb = Sandbox("wwcodescorp", "codes-secret")
    sb.add_member("a_staff", "A店店员")
    group = sb.create_group("a_staff", "南京西路店福利群")
    server = serve(sb, "127.0.0.1", 0)
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    for key, value in {"SCRM_DATABASE__URL": url, "SCRM_REDIS__URL": redis_url, "COLUMNS": "200",
                       "SCRM_WECOM__CORP_ID": "wwcodescorp", "SCRM_WECOM__SECRET": "codes-secret",
                       "SCRM_WECOM__API_BASE_URL": server.api_base_url}.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as s:
        s.add(Store(code="A", name="南京西路店", city="上海"))
        s.add(Store(code="B", name="国贸店", city="北京"))  # no staff, no groups yet
        s.add(StoreStaff(store_code="A", userid="a_staff"))
        s.add(StoreStaff(store_code="A", userid="ghost"))  # not a WeCom member: WeCom refuses
        s.add(CustomerGroup(chat_id=group.chat_id, name=group.name, owner_userid="a_staff", store_code="A"))
        s.commit()
    from scrm.cli import app

    yield (lambda *args: CliRunner().invoke(app, ["stores", "codes", *args])), engine, sb
    engine.dispose()
    server.stop()
    dispose_engines()
    reset_settings_cache()


def test_codes_are_created_once_and_problems_are_named(env):
    run, engine, sb = env
    first = run()
    assert first.exit_code == 1, first.output  # one staff member could not get a code
    assert "staff codes: 1 created, 0 unchanged, 0 removed" in first.output
    assert "failed: A/ghost: errcode" in first.output
    assert "1 created" in first.output and "1 no_groups" in first.output and "B" in first.output
    assert ("no groups yet: B (put customer groups on a store with `scrm stores groups assign STORE CHAT_ID…`; "
            "`scrm stores groups list --unassigned` shows the chat ids)") in first.output
    with Session(engine) as s:
        rows = {(c.kind, c.userid): c for c in s.exec(select(StoreCode))}
    assert rows[("staff", "a_staff")].config_id in sb.contact_ways
    assert sb.contact_ways[rows[("staff", "a_staff")].config_id].state == rows[("staff", "a_staff")].state
    assert rows[("group", "")].state == "sg:A" and rows[("group", "")].config_id in sb.join_ways
    again = run("--store", "A")
    assert "0 created, 1 unchanged" in again.output and "1 unchanged" in again.output.split("group live codes:")[1]
    assert len(sb.contact_ways) == 1 and len(sb.join_ways) == 1  # nothing created twice
    assert run("--store", "NOPE").exit_code == 2

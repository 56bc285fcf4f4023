"""Migration 0009 on a database with clicks from before the write-behind, and the clicks secret.

Mutations tried (each failed a test here, then was undone):
- ``counted`` added with server default false → old clicks no longer counted
  (``test_clicks_from_before_the_write_behind_keep_counting``);
- ``unique_clicks`` left at 0 instead of copied from ``clicks`` → same test;
- the derivation returning ``web.session_secret`` itself → ``test_the_clicks_secret_is_derived_with_its_own_purpose``.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command

from scrm.clicks.secret import clicks_secret, derive_clicks_secret
from scrm.config import SANDBOX_CORP_ID, ConfigError, Settings
from scrm.db import alembic_config, make_engine, migrate
from scrm.web.toolbar import session_secret

OLD = dt.datetime(2026, 11, 20, 1, 2, 3, tzinfo=dt.UTC)


def test_clicks_from_before_the_write_behind_keep_counting(db_url):
    command.upgrade(alembic_config(db_url), "0008")
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO tracked_links (code, post_id, position, chat_id, template_id, day, url, clicks, "
                "first_clicked_at, last_clicked_at, created_at) VALUES ('old1', 1, 0, 'wr1', 'breakfast', "
                "'2026-11-20', 'https://m.example.com/a', 2, :t, :t, :t)"), {"t": OLD})
            for _ in range(2):
                conn.execute(sa.text("INSERT INTO link_clicks (code, clicked_at) VALUES ('old1', :t)"), {"t": OLD})
        migrate(db_url)
        with eng.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT id, event_id, visitor, agent, agent_reason, reason, counted, external_userid "
                "FROM link_clicks ORDER BY id")).all()
            link = conn.execute(sa.text("SELECT clicks, unique_clicks FROM tracked_links")).one()
            # event_id is unique now: a second row with a stored id is refused
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("INSERT INTO link_clicks (event_id, code, clicked_at, visitor, agent, reason, "
                                     "counted) VALUES (:e, 'old1', :t, '', 'person', 'counted', true)"),
                             {"e": rows[0].event_id, "t": OLD})
        assert [(r.event_id, r.visitor, r.agent, r.agent_reason, r.reason, bool(r.counted), r.external_userid)
                for r in rows] == [(str(r.id), "", "person", None, "counted", True, None) for r in rows]
        assert tuple(link) == (2, 2)
        command.downgrade(alembic_config(db_url), "0008")  # and back, on both backends
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM link_clicks")).scalar() == 2
    finally:
        eng.dispose()


def test_the_clicks_secret_is_derived_with_its_own_purpose():
    assert derive_clicks_secret("set-explicitly-0123456789", "web", "corp", "wwreal") == "set-explicitly-0123456789"
    from_web = derive_clicks_secret("", "web-session-secret-01234", "corp-secret", "wwreal")
    from_corp = derive_clicks_secret("", "", "corp-secret", "wwreal")
    assert len({from_web, from_corp, "web-session-secret-01234", "corp-secret",
                session_secret("", "corp-secret")}) == 5  # never a secret it comes from, nor the toolbar's
    sandbox = derive_clicks_secret("", "", "", SANDBOX_CORP_ID)
    assert sandbox == derive_clicks_secret("", "", "", SANDBOX_CORP_ID) and len(sandbox) >= 16
    with pytest.raises(ConfigError, match="SCRM_CLICKS__SECRET"):
        derive_clicks_secret("", "", "", "wwrealcorp")
    assert clicks_secret(Settings(clicks={"secret": "from-settings-0123456789"})) == "from-settings-0123456789"

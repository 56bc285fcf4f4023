"""Operator pages (/docs, /redoc, /openapi.json, /metrics): served offline, public in the sandbox,
behind the operator token in production, absent when production has no token."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from scrm.config import SANDBOX_CORP_ID, DatabaseSettings, RedisSettings, Settings, WebSettings, WeComSettings
from tests.web.shop import KEY, make_app

OPERATOR_PAGES = ["/docs", "/redoc", "/openapi.json", "/metrics"]


@pytest.fixture
def sandbox(sqlite_engine):
    with TestClient(make_app(sqlite_engine)) as client:
        yield client


def test_docs_work_offline_and_are_public_for_the_sandbox(sandbox):
    for path in OPERATOR_PAGES:
        assert sandbox.get(path).status_code == 200, path
    docs = sandbox.get("/docs").text
    assets = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", docs)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    js = next(a for a in assets if a.endswith("swagger-ui-bundle.js"))
    assert sandbox.get(js).status_code == 200  # served by scrm itself
    redoc = sandbox.get("/redoc").text
    assert "cdn" not in redoc.lower() and "fonts.googleapis" not in redoc


@pytest.fixture
def production(sqlite_engine):
    def make(token=""):
        return TestClient(make_app(sqlite_engine, operator_pages_public=False, operator_token=token))
    return make


def test_without_a_token_production_hides_the_operator_pages(production):
    with production() as client:
        for path in OPERATOR_PAGES:
            assert client.get(path).status_code == 404, path
            assert client.get(path, headers={"Authorization": "Bearer "}).status_code == 404
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_with_a_token_production_asks_for_it(production):
    with production("s3cret") as client:
        for path in OPERATOR_PAGES:
            anon = client.get(path)
            assert anon.status_code == 401 and anon.headers["www-authenticate"].startswith("Basic "), path
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get(path, auth=("operator", "wrong")).status_code == 401
            assert client.get(path, headers={"Authorization": "Basic !!notbase64"}).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
            assert client.get(path, auth=("anyone", "s3cret")).status_code == 200, path
        assert "scrm_inbox_backlog" in client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text


def test_app_from_settings_protects_the_operator_pages_outside_the_sandbox(tmp_path, redis_url, monkeypatch):
    from scrm.db import migrate
    from scrm.web.app import app_from_settings

    def settings(corp_id, **web):
        db = f"sqlite:///{tmp_path / (corp_id + '.db')}"
        migrate(db)
        return Settings(wecom=WeComSettings(corp_id=corp_id, callback_token="tok", encoding_aes_key=KEY),
                        database=DatabaseSettings(url=db), redis=RedisSettings(url=redis_url), web=WebSettings(**web))

    with TestClient(app_from_settings(settings(SANDBOX_CORP_ID))) as client:
        assert client.get("/metrics").status_code == 200
    with TestClient(app_from_settings(settings("wwrealcorp"))) as client:
        assert client.get("/metrics").status_code == 404 and client.get("/docs").status_code == 404
    with TestClient(app_from_settings(settings("wwrealcorp", operator_token="tkn"))) as client:
        assert client.get("/docs").status_code == 401
        assert client.get("/docs", headers={"Authorization": "Bearer tkn"}).status_code == 200
    with TestClient(app_from_settings(settings("wwrealcorp", operator_pages_public=True))) as client:
        assert client.get("/openapi.json").status_code == 200

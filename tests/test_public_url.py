"""A real corp without web.public_url gets a warning at start: the links in posts and on QR pages
would point at 127.0.0.1, which no customer can open."""

from __future__ import annotations

from structlog.testing import capture_logs

from scrm.cli import warn_public_url
from scrm.config import Settings, WebSettings, WeComSettings


def warnings_for(**wecom_and_web) -> list[dict]:
    settings = Settings(wecom=WeComSettings(corp_id=wecom_and_web.get("corp_id", "ww1234567890abcdef")),
                        web=WebSettings(public_url=wecom_and_web.get("public_url", "")))
    with capture_logs() as logs:
        warn_public_url(settings)
    return [e for e in logs if e["log_level"] == "warning"]


def test_a_real_corp_without_a_public_url_is_warned_with_what_to_set():
    [warning] = warnings_for()
    assert warning["event"] == "public_url_missing" and "SCRM_WEB__PUBLIC_URL" in warning["hint"]
    assert warning["fallback"] == "http://127.0.0.1:8000"


def test_no_warning_with_a_public_url_or_for_the_sandbox():
    assert warnings_for(public_url="https://scrm.example.com") == []
    assert warnings_for(corp_id="ww0000sandboxcorp") == []

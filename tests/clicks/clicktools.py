"""Shared pieces of the write-behind tests: a link table, an app wired like production, readers."""

from __future__ import annotations

import base64
import datetime as dt
import os

import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import Session, col, select

from scrm.clicks.flush import flush_until_empty
from scrm.clicks.queue import PROCESSING_KEY, QUEUE_KEY
from scrm.sop.models import LinkClick, TrackedLink
from scrm.web.app import create_app
from scrm.wecom.crypto import CallbackCrypto

SECRET = "clicks-test-secret-0123456789"
KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")
WINDOW = dt.timedelta(hours=24)
T0 = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai
WECHAT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Mobile/15E148 MicroMessenger/8.0.49(0x18003129) NetType/4G Language/zh_CN")
ANDROID_WECHAT = ("Mozilla/5.0 (Linux; Android 14; PJZ110) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/116.0 Mobile Safari/537.36 XWEB/1160065 MMWEBSDK/20231202 MicroMessenger/8.0.47.2560")
URLS = {"lk1": "https://m.example.com/coupon/breakfast", "lk2": "https://m.example.com/coupon/lunch"}


class SimClock:
    """The clock the app records clicks with (the demo drives the redirect with one like it)."""

    def __init__(self, now: dt.datetime = T0):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def seed_links(engine) -> None:
    with Session(engine) as s:
        for i, (code, url) in enumerate(sorted(URLS.items())):
            s.add(TrackedLink(code=code, post_id=100 + i, position=0, chat_id="wrChat1", template_id="breakfast",
                              day=dt.date(2026, 11, 30), url=url))
        s.commit()


def make_client(engine, click_redis, clock, *, ip: str = "117.136.12.7") -> TestClient:
    app = create_app(crypto=CallbackCrypto("tok", KEY, "wwclickscorp"), engine=engine, send=lambda ids: None,
                     click_redis=click_redis, clicks_secret=SECRET, click_window=WINDOW, clock=clock)
    return TestClient(app, base_url="http://scrm", client=(ip, 40000))


def click(client: TestClient, path: str, ua: str = WECHAT, **headers):
    r = client.get(path, headers={"user-agent": ua, **headers}, follow_redirects=False)
    return r


def rows(engine) -> list[LinkClick]:
    with Session(engine) as s:
        return list(s.exec(select(LinkClick).order_by(col(LinkClick.clicked_at), col(LinkClick.event_id))).all())


def row_count(engine) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(LinkClick)).one()


def link(engine, code: str) -> TrackedLink:
    with Session(engine) as s:
        found = s.get(TrackedLink, code)
        assert found is not None
        return found


def queued(r: redis_lib.Redis) -> int:
    return int(r.llen(QUEUE_KEY)) + int(r.llen(PROCESSING_KEY))


def flush(engine, r: redis_lib.Redis, batch: int = 5000):
    return flush_until_empty(engine, r, window=WINDOW, batch=batch)

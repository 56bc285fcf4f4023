"""The SOP sender every worker process builds from settings: its calls in flight follow
``sop.send_concurrency``, and every process paces add_msg_template on one rolling window in Redis,
so two worker processes together stay under WeCom's corp-wide limit (not 9,000 a minute each).

Tried: ``build_sop_sender`` without ``rate=`` (each sender its own in-process limiter): nothing is
counted in Redis, the test fails; without ``concurrency=``: 8 instead of 5, the test fails.
"""

from __future__ import annotations

import redis as redis_lib

from scrm.config import get_settings, reset_settings_cache
from scrm.db import dispose_engines


def test_worker_processes_share_one_add_msg_template_window_and_the_concurrency_setting(
        tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("SCRM_DATABASE__URL", f"sqlite:///{tmp_path / 'scrm.db'}")
    monkeypatch.setenv("SCRM_REDIS__URL", redis_url)
    monkeypatch.setenv("SCRM_WECOM__SECRET", "wiring-secret")
    monkeypatch.setenv("SCRM_SOP__SEND_CONCURRENCY", "5")
    reset_settings_cache()
    try:
        from scrm.runtime import build_sop_sender

        first, second = build_sop_sender(), build_sop_sender()  # as two worker processes would
        assert first.concurrency == second.concurrency == 5
        for _ in range(3):
            first.rate.acquire()
        for _ in range(2):
            second.rate.acquire()
        r = redis_lib.Redis.from_url(redis_url)
        key = f"scrm:sop:add_msg_template:{get_settings().wecom.corp_id}"
        assert r.zcard(key) == 5  # one window: both senders' calls counted together
        r.close()
    finally:
        dispose_engines()
        reset_settings_cache()

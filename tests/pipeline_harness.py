"""An in-process scrm wired to the sandbox: receiver app, real Redis broker, a dramatiq worker."""

from __future__ import annotations

import base64
import os
from contextlib import contextmanager

import dramatiq
from fastapi.testclient import TestClient

from scrm.callbacks.dispatch import Processor
from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.web.app import create_app
from scrm.wecom.client import WeComClient
from scrm.wecom.crypto import CallbackCrypto
from tests.waiting import join_worker
from workers import actors
from workers.broker import make_redis_broker, setup_broker

CORP = "wwpipelinecorp"
SECRET = "pipeline-secret"
TOKEN = "pipelineToken"
AES_KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")


class Harness:
    def __init__(self, engine, redis_url: str):
        import redis

        self.engine = engine
        self.crypto = CallbackCrypto(TOKEN, AES_KEY, CORP)
        self.broker = setup_broker(make_redis_broker(redis_url))
        self.redis = redis.Redis.from_url(redis_url)
        self.app = create_app(
            crypto=self.crypto,
            engine=engine,
            send=actors.enqueue_callbacks,
            redis_ping=self.redis.ping,
            queue_depth=lambda: self.redis.llen("dramatiq:callbacks"),
        )
        # Entered, so every request runs on one event loop, as under uvicorn (group commit).
        self.web = TestClient(self.app, base_url="http://scrm").__enter__()
        self.sandbox = Sandbox(
            CORP, SECRET, callback_token=TOKEN, encoding_aes_key=AES_KEY,
            callback_url="http://scrm/wecom/callback", callback_http=self.web,
        )
        self.sandbox_http = TestClient(create_sandbox_app(self.sandbox), base_url="http://sandbox")
        self.client = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", redis=self.redis, http=self.sandbox_http,
                                  sleep=lambda s: None)
        self.processor = Processor(engine, self.client, welcome_text="欢迎光临")
        actors.set_processor(self.processor)
        self.worker: dramatiq.Worker | None = None

    def start_worker(self, threads: int = 2) -> None:
        self.worker = dramatiq.Worker(self.broker, worker_timeout=50, worker_threads=threads)
        self.worker.start()

    def drain(self, timeout_ms: int = 20_000) -> None:
        self.broker.join("callbacks", timeout=timeout_ms)
        if self.worker:
            join_worker(self.worker, timeout=timeout_ms / 1000)

    def close(self) -> None:
        if self.worker:
            self.worker.stop()
        actors.set_processor(None)
        self.web.__exit__(None, None, None)
        self.sandbox_http.close()
        self.broker.close()
        self.redis.close()


@contextmanager
def harness(engine, redis_url):
    h = Harness(engine, redis_url)
    try:
        yield h
    finally:
        h.close()

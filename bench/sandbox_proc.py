"""The WeCom sandbox as its own server process, for the benches that measure scrm against WeCom's
round trip (``bench/apply.py``, ``bench/sop_fire.py``).

    with sandbox_process(latency_ms=30, setup="bench.apply:seed_sandbox", setup_arg={...}) as sb:
        sb.api_base_url   # http://127.0.0.1:PORT/cgi-bin/  (give it to WeComClient / SCRM_WECOM__API_BASE_URL)
        sb.base_url       # the /sandbox/ admin endpoints (state, callbacks, ...)

``setup`` ("module:function") is called in the child with the fresh ``Sandbox`` and ``setup_arg``
before it serves: it adds the members, customers and groups the bench's events name. The child is
the same server ``scrm sandbox`` runs (uvicorn, the sandbox app, ``sandbox.latency_ms``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SANDBOX_SECRET = "sandbox-secret"


@dataclass
class SandboxProcess:
    base_url: str
    corp_id: str
    secret: str
    process: subprocess.Popen

    @property
    def api_base_url(self) -> str:
        return self.base_url + "/cgi-bin/"


@contextlib.contextmanager
def sandbox_process(*, latency_ms: int = 30, rate_limit_per_minute: int = 10_000, setup: str | None = None,
                    setup_arg: object = None, corp_id: str = "ww0000sandboxcorp", secret: str = SANDBOX_SECRET,
                    callback_url: str = "", callback_token: str = "", encoding_aes_key: str = "",
                    startup_timeout: float = 120.0) -> Iterator[SandboxProcess]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--latency-ms", str(latency_ms),
           "--rate-limit", str(rate_limit_per_minute), "--corp-id", corp_id, "--secret", secret]
    if setup:
        cmd += ["--setup", setup, "--setup-arg", json.dumps(setup_arg)]
    env = {**os.environ, "SCRM_BENCH_CB_URL": callback_url, "SCRM_BENCH_CB_TOKEN": callback_token,
           "SCRM_BENCH_CB_AES": encoding_aes_key, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        base = None
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                base = line.split()[1]
                break
        if base is None:
            raise RuntimeError(f"the sandbox process did not start (exit code {proc.poll()})")
        yield SandboxProcess(base, corp_id, secret, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=int, default=30)
    ap.add_argument("--rate-limit", type=int, default=10_000)
    ap.add_argument("--corp-id", default="ww0000sandboxcorp")
    ap.add_argument("--secret", default=SANDBOX_SECRET)
    ap.add_argument("--setup")
    ap.add_argument("--setup-arg", default="null")
    args = ap.parse_args(argv)

    from scrm.sandbox.server import serve
    from scrm.sandbox.users import Sandbox

    sandbox = Sandbox(args.corp_id, args.secret, rate_limit_per_minute=args.rate_limit,
                      callback_url=os.environ.get("SCRM_BENCH_CB_URL", ""),
                      callback_token=os.environ.get("SCRM_BENCH_CB_TOKEN", ""),
                      encoding_aes_key=os.environ.get("SCRM_BENCH_CB_AES", ""))
    if args.setup:
        module, _, func = args.setup.partition(":")
        getattr(importlib.import_module(module), func)(sandbox, json.loads(args.setup_arg))
    server = serve(sandbox, "127.0.0.1", 0, latency_ms=args.latency_ms)
    print(f"READY {server.base_url}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

"""Benchmark: WeCom callback ingest, through a real HTTP server, against the bare decrypt+parse floor.

    python bench/ingest.py [--count 5000] [--concurrency 32] [--database-url postgresql+psycopg://...]

Prints figures; asserts nothing about speed. The receiver runs in its own process (uvicorn, uvloop,
httptools, one worker) with a real SQLite/PostgreSQL database and a real Redis + dramatiq RedisBroker.
The load generator is an asyncio raw-socket HTTP/1.1 client (keep-alive, N connections) in this
process, every request built before the clock starts, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUEUE_KEY = "dramatiq:callbacks"
GOAL_PER_PROCESS = 2000.0


# -- the server process ----------------------------------------------------------------------
def serve(port: int, database_url: str, redis_url: str, token: str, aes_key: str, corp_id: str) -> None:
    import uvicorn

    import scrm.models  # noqa: F401  (register tables)
    from scrm.db import make_engine
    from scrm.redisserver import get_redis
    from scrm.web.app import create_app
    from scrm.wecom.crypto import CallbackCrypto
    from workers.broker import make_redis_broker, setup_broker

    setup_broker(make_redis_broker(redis_url))
    from workers.actors import enqueue_callbacks

    r = get_redis(redis_url)
    app = create_app(
        crypto=CallbackCrypto(token, aes_key, corp_id),
        engine=make_engine(database_url),
        send=enqueue_callbacks,
        redis_ping=r.ping,
        queue_depth=lambda: r.llen(QUEUE_KEY),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


async def bare_app(scope, receive, send) -> None:
    """The HTTP ceiling: read the body, answer ``success``; no crypto, no storage."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"7")]})
    await send({"type": "http.response.body", "body": b"success"})


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: mp.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"server process exited with {proc.exitcode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready")


# -- the load generator ----------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def run_load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    latencies: list[float] = [0.0] * len(requests)
    statuses: dict[int, int] = {}
    next_index = 0
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(min(concurrency, len(requests)))]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        while next_index < len(requests):
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            writer.write(requests[i])
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                status = -1  # connection dropped: count it, reconnect
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies[i] = time.perf_counter() - t0
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - start
    return elapsed, latencies, statuses


def build_request(port: int, params: dict[str, str], body: str) -> bytes:
    data = body.encode("utf-8")
    return (
        f"POST /wecom/callback?{urllib.parse.urlencode(params)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode("ascii") + data


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000, help="callbacks to send (default 5000)")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = ap.parse_args(argv)

    import redis
    from sqlalchemy import func, select
    from sqlmodel import SQLModel

    import scrm.models  # noqa: F401
    from scrm.callbacks.models import CallbackInbox
    from scrm.db import make_engine
    from scrm.redisserver import RedisServer
    from scrm.wecom.crypto import CallbackCrypto
    from scrm.wecom.events import parse_event, render_event

    token = secrets.token_hex(16)
    aes_key = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    corp_id = "wwbenchcorp"
    crypto = CallbackCrypto(token, aes_key, corp_id)
    run_id = secrets.token_hex(4)

    with tempfile.TemporaryDirectory(prefix="scrm-bench-") as tmp:
        tmpdir = Path(tmp)
        database_url = args.database_url or f"sqlite:///{tmpdir / 'bench.db'}"
        engine = make_engine(database_url)
        SQLModel.metadata.create_all(engine)
        table = CallbackInbox.__table__

        def inbox_rows() -> int:
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(table)).scalar_one()

        rows_before = inbox_rows()
        redis_server = RedisServer(tmpdir / "redis", persist=False).start()
        proc = None
        try:
            r = redis.Redis.from_url(redis_server.url)

            # Distinct events, sealed before any timing.
            now = int(time.time())
            sealed = []
            for i in range(args.count):
                plaintext = render_event(
                    corp_id, "change_external_contact", "add_external_contact", now,
                    UserID=f"staff{i % 50}", ExternalUserID=f"wmbench{run_id}x{i:07d}", State=f"bench-{run_id}",
                )
                sealed.append(crypto.seal(plaintext))

            # 1. The floor: bare decrypt + parse in a tight loop.
            for params, body in sealed[:200]:  # warm-up
                parse_event(crypto.open_envelope(body, params["msg_signature"], params["timestamp"], params["nonce"]))
            start = time.perf_counter()
            for params, body in sealed:
                parse_event(crypto.open_envelope(body, params["msg_signature"], params["timestamp"], params["nonce"]))
            floor = args.count / (time.perf_counter() - start)

            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                runner = asyncio.run

            # 2. The HTTP ceiling: the same server stack and load answering without doing any work.
            ctx = mp.get_context("spawn")
            port = free_port()
            bare = ctx.Process(target=serve_bare, args=(port,), daemon=True)
            bare.start()
            try:
                wait_ready(port, bare)
                bare_requests = [build_request(port, params, body) for params, body in sealed]
                runner(run_load(port, bare_requests[:500], args.concurrency))  # warm-up
                bare_elapsed, _, _ = runner(run_load(port, bare_requests, args.concurrency))
                ceiling = args.count / bare_elapsed
            finally:
                bare.terminate()
                bare.join(10)

            # 3. Through the real receiver in its own process.
            port = free_port()
            proc = ctx.Process(
                target=serve, args=(port, database_url, redis_server.url, token, aes_key, corp_id), daemon=True
            )
            proc.start()
            wait_ready(port, proc)
            requests = [build_request(port, params, body) for params, body in sealed]

            # Warm the server's connection handling without storing anything.
            warm = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            asyncio.run(run_load(port, [warm] * 200, min(args.concurrency, 8)))

            cpu0 = time.process_time()
            server_cpu0 = process_cpu_seconds(proc.pid)
            elapsed, latencies, statuses = runner(run_load(port, requests, args.concurrency))
            client_cpu = time.process_time() - cpu0
            server_cpu1 = process_cpu_seconds(proc.pid)
            server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0

            rows = inbox_rows() - rows_before
            # Wait until the queue depth settles, then count the callbacks the queued messages carry
            # (the receiver sends one fan-out message per group commit).
            queue_depth, deadline = -1, time.monotonic() + 10
            while time.monotonic() < deadline:
                depth = r.llen(QUEUE_KEY)
                if depth == queue_depth:
                    break
                queue_depth = depth
                time.sleep(0.3)
            queued_callbacks = 0
            for raw in r.hvals(QUEUE_KEY + ".msgs"):
                message = json.loads(raw)
                queued_callbacks += len(message["args"][0]) if message["actor_name"] == "fan_out_callbacks" else 1
        finally:
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            redis_server.stop()
            engine.dispose()

    rate = args.count / elapsed
    lat = sorted(latencies)
    non_200 = sum(n for s, n in statuses.items() if s != 200)
    ratio = rate / floor
    backend = database_url.split(":", 1)[0] if args.database_url else "sqlite (temp dir)"

    print("scrm callback ingest benchmark")
    print(f"  cores (os.cpu_count)          {os.cpu_count()}")
    print(f"  database                      {backend}")
    print(f"  callbacks                     {args.count}  (concurrency {args.concurrency} keep-alive connections)")
    print(f"  floor: decrypt+parse          {floor:,.0f} callbacks/s  (1 process, tight loop)")
    print(f"  HTTP ceiling: bare uvicorn    {ceiling:,.0f} answers/s  (reads the body, answers 'success')")
    print(f"  HTTP: through uvicorn         {rate:,.0f} callbacks/s  ({elapsed:.2f} s, 1 server process)")
    print(f"  ack latency p50 / p99         {percentile(lat, 50) * 1000:.2f} ms / {percentile(lat, 99) * 1000:.2f} ms"
          f"  (mean {statistics.fmean(lat) * 1000:.2f} ms)")
    print(f"  ratio HTTP / floor            {ratio:.2f}")
    verdict = "== count, OK" if rows == args.count else f"MISMATCH: expected {args.count}"
    print(f"  inbox rows stored             {rows}  ({verdict})")
    print(f"  callbacks queued in Redis     {queued_callbacks}  in {queue_depth} messages"
          f"  (no worker runs during the benchmark)")
    print(f"  non-200 answers               {non_200}  {dict(sorted(statuses.items()))}")
    if server_cpu is not None:
        print(f"  server process CPU            {server_cpu:.2f} s over {elapsed:.2f} s wall "
              f"({100 * server_cpu / elapsed:.0f}% of one core, {1e6 * server_cpu / args.count:.0f} us per callback)")
    print(f"  load generator CPU            {client_cpu:.2f} s over {elapsed:.2f} s wall "
          f"({100 * client_cpu / elapsed:.0f}% of one core)")
    print(f"  goal >= {GOAL_PER_PROCESS:,.0f}/s per process    {'MET' if rate >= GOAL_PER_PROCESS else 'NOT MET'}"
          f"  ({rate:,.0f}/s)")
    print(f"  goal >= half the floor        {'MET' if ratio >= 0.5 else 'NOT MET'}  ({ratio:.2f} of {floor:,.0f}/s)")
    # Per-callback CPU budget: if the receiver did nothing but uvicorn's work plus the floor's work,
    # it could reach at most 1 / (1/ceiling + 1/floor).
    best = 1 / (1 / ceiling + 1 / floor)
    print(f"  bound: uvicorn + floor alone  {best:,.0f}/s = {best / floor:.2f} of the floor"
          f"  (per callback {1e6 / ceiling:.0f} us HTTP + {1e6 / floor:.0f} us decrypt+parse;"
          f" storing and queueing took {max(0.0, 1e6 / rate - 1e6 / best):.0f} us more)")
    return 0 if rows == args.count and non_200 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

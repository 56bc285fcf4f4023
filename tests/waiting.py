"""Waiting in tests without hanging and without hiding failures.

``wait_until`` polls a condition against a deadline, so a server that never starts fails the test
with a message instead of hanging CI. ``run_threads`` starts racing threads together and re-raises
the first exception any of them raised (an exception inside a plain ``threading.Thread`` is only a
warning, and the test would pass).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def join_worker(worker: Any, timeout: float = 20.0) -> None:
    """dramatiq's Worker.join has no deadline: run it aside and wait for it with one, so a stuck
    job fails the test with a message instead of hanging it."""
    done = threading.Event()

    def join() -> None:
        worker.join()
        done.set()

    threading.Thread(target=join, daemon=True).start()
    wait_until(done.is_set, timeout=timeout, what="the worker to finish its jobs")


def run_threads(targets: Iterable[Callable[[], Any]], *, timeout: float = 60.0) -> list[Any]:
    """Run the callables in threads released at the same moment; return their results in order,
    or raise the first exception one of them raised."""
    targets = list(targets)
    barrier = threading.Barrier(len(targets))
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def runner(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        if t.is_alive():
            raise AssertionError(f"a racing thread did not finish within {timeout:.0f}s")
    if errors:
        raise errors[0]
    return results

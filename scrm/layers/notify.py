"""Events that can move a customer between layers (an order, a refund, a counted click, a join,
a leave, an add, a delete) tell the layering workers here. The customers are marked in Redis and
one delayed job re-layers them after ``layers.debounce_seconds`` of quiet, so a burst is one job
(:class:`scrm.layers.queue.RelayerQueue`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from redis import Redis


def schedule_relayer(delay_ms: int) -> None:
    """Queue the drain job, delayed (dramatiq's delay: the message waits in Redis, not a worker)."""
    from workers.actors import relayer_dirty

    relayer_dirty.send_with_options(delay=max(0, int(delay_ms)))


def relayer_notifier(redis: Redis, settings, *,
                     schedule: Callable[[int], None] = schedule_relayer) -> Callable[[Iterable[str]], None]:
    """``mark(ids)`` for the event edges (order API, click flush, callback dispatch)."""
    from scrm.layers.queue import RelayerQueue

    queue = RelayerQueue(redis, schedule, debounce_seconds=settings.layers.debounce_seconds)

    def mark(external_userids: Iterable[str]) -> None:
        ids = [i for i in external_userids if i]
        if ids:
            queue.mark(ids)

    return mark

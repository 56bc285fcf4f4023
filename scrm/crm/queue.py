"""The rebuild queue: new messages mark their customers dirty in Redis and one debounced job
rebuilds them after ``crm.debounce_seconds`` of quiet, so an import of a thousand messages for one
customer is one rebuild, not a thousand.

The debounce is :class:`scrm.layers.queue.RelayerQueue` (generic over its key prefix) under
``scrm:crm``: ``scrm:crm:dirty`` holds the ids waiting, ``scrm:crm:scheduled`` is set while a drain
is scheduled. Redis down never fails an import: the mark is skipped with a warning and the nightly
:func:`scrm.crm.service.rebuild_all` catches the customers up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from scrm.layers.queue import RelayerQueue, RelayerQueueUnavailable
from scrm.logs import get_logger

log = get_logger(__name__)

KEY_PREFIX = "scrm:crm"


def crm_queue(redis: Any, settings: Any, schedule: Callable[[int], Any], *, key_prefix: str = KEY_PREFIX
              ) -> RelayerQueue:
    return RelayerQueue(redis, schedule, debounce_seconds=settings.crm.debounce_seconds, key_prefix=key_prefix)


def schedule_crm_rebuild(delay_ms: int) -> None:
    """Queue the drain job, delayed (dramatiq's delay: the message waits in Redis, not a worker)."""
    import importlib

    # Looked up by name: the actor lives in workers.actors (the worker's module), wired by its owner.
    actor = importlib.import_module("workers.actors").crm_rebuild_dirty
    actor.send_with_options(delay=max(0, int(delay_ms)))


def crm_notifier(redis: Any, settings: Any, *,
                 schedule: Callable[[int], Any] = schedule_crm_rebuild,
                 key_prefix: str = KEY_PREFIX) -> Callable[[Iterable[str]], None]:
    """``mark(external_userids)`` for the ingest (archive import, CSV import, POST /api/crm/records,
    a mobile newly linked to a customer). Never raises for Redis: a failed mark is a warning."""
    queue = crm_queue(redis, settings, schedule, key_prefix=key_prefix)

    def mark(external_userids: Iterable[str]) -> None:
        ids = [i for i in external_userids if i]
        if not ids:
            return
        try:
            queue.mark(ids)
        except RelayerQueueUnavailable as exc:
            log.warning("crm_mark_skipped", customers=len(ids), error=str(exc),
                        hint="the nightly rebuild catches them up")
        except Exception as exc:  # the dramatiq broker (Redis) refused the scheduled job
            log.warning("crm_mark_skipped", customers=len(ids), error=f"{type(exc).__name__}: {exc}",
                        hint="the nightly rebuild catches them up")

    return mark

"""The dramatiq broker, configured from settings (real Redis) or given (StubBroker in tests)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

_broker: dramatiq.Broker | None = None


def make_redis_broker(url: str, *, heartbeat_timeout_ms: int = 60_000) -> RedisBroker:
    broker = RedisBroker(
        url=url,
        heartbeat_timeout=heartbeat_timeout_ms,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        # CurrentMessage: an actor reads its message's enqueue time (the queue wait it logs).
        middleware=[AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(),
                    CurrentMessage()],
    )
    return broker


def setup_broker(broker: dramatiq.Broker | None = None, *, url: str | None = None) -> dramatiq.Broker:
    """Install ``broker`` (or a RedisBroker for ``url`` / settings) and bind every actor to it."""
    global _broker
    from workers import actors  # declared on a placeholder broker first

    if broker is None:
        if url is None:
            from scrm.config import get_settings
            from scrm.redisserver import redis_url

            url = redis_url(get_settings())
        broker = make_redis_broker(url)
    dramatiq.set_broker(broker)
    _broker = broker
    for actor in actors.ALL:
        actor.broker = broker
        broker.declare_actor(actor)
    return broker


def current_broker() -> dramatiq.Broker:
    if _broker is None:
        return setup_broker()
    return _broker


def send_many(actor: dramatiq.Actor, args_list: list[tuple]) -> None:
    """Enqueue one message per args tuple; on Redis, all of them in one round trip.

    The receiver enqueues each group commit's new inbox ids together. dramatiq's RedisBroker sends
    one EVALSHA per message; here the same dispatch script runs for every message inside one
    pipeline, so the queue state is exactly what ``actor.send`` would have produced.
    """
    broker = actor.broker
    if not isinstance(broker, RedisBroker) or len(args_list) < 2:
        for args in args_list:
            actor.send(*args)
        return
    from uuid import uuid4

    from dramatiq.common import current_millis

    dispatch = broker.scripts["dispatch"]
    keys = [broker.namespace]
    messages = []
    with broker.client.pipeline(transaction=False) as pipe:
        for args in args_list:
            message = actor.message(*args).copy(options={"redis_message_id": str(uuid4())})
            broker.emit_before("enqueue", message, None)
            dispatch(
                keys=keys,
                args=[
                    "enqueue", current_millis(), message.queue_name, broker.broker_id,
                    broker.heartbeat_timeout, broker.dead_message_ttl,
                    broker._should_do_maintenance("enqueue"), broker._max_unpack_size(),
                    message.options["redis_message_id"], message.encode(),
                ],
                client=pipe,
            )
            messages.append(message)
        pipe.execute()
    for message in messages:
        broker.emit_after("enqueue", message, None)

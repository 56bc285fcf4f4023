"""The dramatiq broker, configured from settings (real Redis) or given (StubBroker in tests)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

_broker: dramatiq.Broker | None = None


def make_redis_broker(url: str, *, heartbeat_timeout_ms: int = 60_000) -> RedisBroker:
    broker = RedisBroker(
        url=url,
        heartbeat_timeout=heartbeat_timeout_ms,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        middleware=[AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries()],
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

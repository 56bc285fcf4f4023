"""Wiring from settings: the objects the web app, workers and CLI share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrm.callbacks.dispatch import Processor
from scrm.config import Settings, get_settings
from scrm.db import get_engine
from scrm.redisserver import get_redis, redis_url
from scrm.wecom.client import WeComClient
from scrm.wecom.crypto import CallbackCrypto

if TYPE_CHECKING:
    from scrm.sop.sender import SopSender


def build_client(settings: Settings | None = None) -> WeComClient:
    settings = settings or get_settings()
    return WeComClient.from_settings(settings, redis=get_redis(redis_url(settings)))


def build_processor(settings: Settings | None = None) -> Processor:
    from sqlmodel import Session

    from scrm.crm.hooks import crm_link_hook
    from scrm.crm.queue import crm_notifier
    from scrm.db import utcnow
    from scrm.layers.notify import relayer_notifier
    from scrm.layers.tagsync import reconcile_rule_tags
    from scrm.routing.router import StoreRouter

    settings = settings or get_settings()
    engine = get_engine(settings.database_url())
    redis = get_redis(redis_url(settings))
    client = build_client(settings)
    router = StoreRouter(lambda: Session(engine, expire_on_commit=False), client,
                         welcome_text=settings.wecom.welcome_text, link_base=settings.web.base_url(),
                         group_cap=settings.routing.group_qr_cap, room_base_id=settings.routing.room_base_id)

    def reconcile_tags() -> None:
        """A tag event re-read the library: accept WeCom's renames, forget deleted rule tags."""
        reconcile_rule_tags(engine, client, now=utcnow())

    return Processor(
        engine,
        client,
        welcome_text=settings.wecom.welcome_text,
        chat_delay_ms=settings.pipeline.chat_event_delay_ms,
        max_attempts=settings.pipeline.max_attempts,
        router=router,
        on_customers_changed=relayer_notifier(redis, settings),
        # A contact's remark mobiles may be new: the CRM links calls and SMS waiting on them.
        on_contact_changed=crm_link_hook(engine, crm_notifier(redis, settings)),
        on_tag_library_changed=reconcile_tags,
    )


def build_crypto(settings: Settings | None = None) -> CallbackCrypto:
    settings = settings or get_settings()
    settings.wecom.require_callback_secrets()
    return CallbackCrypto(
        settings.wecom.callback_token.get_secret_value(),
        settings.wecom.encoding_aes_key.get_secret_value(),
        settings.wecom.corp_id,
    )


def build_sop_sender(settings: Settings | None = None) -> SopSender:
    """The SOP sender; templates are re-read from disk (lint-checked) on every batch."""
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from scrm.journeys.jobs import journeys_loader
    from scrm.layers.tagsync import RedisRateLimiter
    from scrm.sop.jobs import load_templates
    from scrm.sop.sender import ADD_MSG_TEMPLATE_PER_MINUTE, SopSender

    settings = settings or get_settings()
    sop = settings.sop
    # WeCom's add_msg_template limit is the corp's, not a process's: every worker paces on one
    # rolling window in Redis (each falls back to its own while Redis is down).
    pace = RedisRateLimiter(get_redis(redis_url(settings)), ADD_MSG_TEMPLATE_PER_MINUTE,
                            key=f"scrm:sop:add_msg_template:{settings.wecom.corp_id}")
    return SopSender(
        get_engine(settings.database_url()),
        build_client(settings),
        lambda: load_templates(Path(sop.templates_dir), sop),
        tz=ZoneInfo(sop.timezone),
        link_base=settings.web.base_url(),
        journeys=journeys_loader(settings),
        concurrency=sop.send_concurrency,
        rate=pace,
    )

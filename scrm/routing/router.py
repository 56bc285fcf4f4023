"""Where the callback worker hands store routing: new contacts from a store's QR code are tagged
with the store and welcomed with the store group's join card; group changes keep the store's
group live code pointing at groups with room."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session

from scrm.logs import get_logger
from scrm.routing.state import parse_state
from scrm.stores import service as stores
from scrm.stores.models import Store
from scrm.wecom.api import StoreCodesAPI
from scrm.wecom.errors import WeComAPIError
from scrm.wecom.messages import (
    MAX_LINK_TITLE_BYTES,
    MAX_TEXT_BYTES,
    LinkAttachment,
    fit_bytes,
    link_attachment,
)

log = get_logger(__name__)
UNREAD = object()  # the caller did not read the store: the router reads it


class StoreRouter:
    def __init__(self, session_factory: Callable[[], Session], client: StoreCodesAPI, *, welcome_text: str,
                 link_base: str,
                 group_cap: int = 200, room_base_id: int = 1):
        self.session_factory, self.client = session_factory, client
        self.welcome_text, self.link_base = welcome_text, link_base.rstrip("/")
        self.group_cap, self.room_base_id = group_cap, room_base_id

    def store_for(self, state: str | None) -> Store | None:
        """The store a contact's ``State`` names (None: not a store's code, or no such store). The
        worker reads it once per contact add and hands it to ``welcome_for`` and ``on_new_contact``."""
        ref = parse_state(state)
        if ref is None:
            return None
        with self.session_factory() as s:
            return s.get(Store, ref.store_code)

    def welcome_for(self, state: str | None, *, store: Store | None | object = UNREAD
                    ) -> tuple[str, list[LinkAttachment]]:
        """The welcome message: for a store's QR code, the store's greeting and a card that opens
        the store group's live code. A long store name is cut to fit the card's 128-byte title
        (and the text its 4000 bytes) rather than lose the welcome, which WeCom allows only once.
        ``store``: ``store_for(state)`` when the caller has it (not read again)."""
        store = self.store_for(state) if store is UNREAD else store
        if not isinstance(store, Store):
            return self.welcome_text, []
        card = link_attachment(
            fit_bytes(f"加入{store.name}福利群", MAX_LINK_TITLE_BYTES),
            f"{self.link_base}/g/{store.code}",
            desc="扫码进群：每天早餐优惠、限时秒杀，只在门店群里发。",
        )
        text = f"{self.welcome_text}\n这里是{store.name}，点下面的卡片加入门店福利群。"
        return fit_bytes(text, MAX_TEXT_BYTES), [card]

    def on_new_contact(self, userid: str, external_userid: str, state: str | None, *,
                       store: Store | None | object = UNREAD) -> str | None:
        """Tag a customer who came through a store's code with that store; returns the store code.
        ``store``: as for ``welcome_for``."""
        store = self.store_for(state) if store is UNREAD else store
        if not isinstance(store, Store):
            return None
        try:
            tag_id = stores.store_tag_id(self.session_factory, self.client, store)
            self.client.mark_tag(userid, external_userid, add=[tag_id])
        except WeComAPIError as exc:
            log.warning("store_tag_failed", store=store.code, external_userid=external_userid, errcode=exc.errcode)
            raise
        log.info("contact_routed_to_store", store=store.code, external_userid=external_userid, userid=userid)
        return store.code

    def on_group_changed(self, chat_id: str) -> None:
        """After a group's members changed: attribute new rooms, keep the live code current."""
        with self.session_factory() as s:
            store_code = stores.attribute_group_to_store(s, chat_id)
            s.commit()
        if store_code:
            stores.refresh_group_code(self.session_factory, self.client, store_code, cap=self.group_cap,
                                      room_base_id=self.room_base_id)

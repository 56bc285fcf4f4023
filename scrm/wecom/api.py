"""The outbound WeCom boundary as Protocols: what each part of scrm calls on WeCom.

``WeComClient`` implements all of them (checked by mypy at the bottom of ``client.py``); tests
and the sandbox hand in fakes that implement only what the code under test calls. Code that
talks to WeCom takes the narrowest Protocol it needs, so mypy checks every call at the
boundary (method names, arguments, and the message shapes of ``scrm.wecom.messages``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from scrm.wecom.messages import AppMessage, Attachment, GroupMsgTemplate, RobotMessage, SingleMsgTemplate


class MassSendAPI(Protocol):
    """Mass sends to customer groups and their delivery results (reference §3.7)."""

    def add_msg_template(self, payload: GroupMsgTemplate | SingleMsgTemplate) -> dict[str, Any]: ...

    def get_groupmsg_list_v2(self, **payload: Any) -> dict[str, Any]: ...

    def get_groupmsg_task(self, msgid: str, cursor: str = "", limit: int = 1000) -> dict[str, Any]: ...

    def get_groupmsg_send_result(self, msgid: str, userid: str, cursor: str = "",
                                 limit: int = 1000) -> dict[str, Any]: ...


class RobotAPI(Protocol):
    """A group robot's webhook (群机器人)."""

    def send_robot_message(self, key: str, message: RobotMessage) -> None: ...


class SopSendAPI(MassSendAPI, RobotAPI, Protocol):
    """What the SOP sender calls."""


class AppMessageAPI(Protocol):
    """App messages to members (message/send): the owners' reminders (reference §3.8a)."""

    def send_app_message(self, payload: AppMessage) -> dict[str, Any]: ...


class CorpTagAPI(Protocol):
    """The corp customer-tag library and tagging a customer (reference §3.3)."""

    def get_corp_tags(self, tag_ids: Sequence[str] | None = None,
                      group_ids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    def add_corp_tag(self, *, group_name: str | None = None, group_id: str | None = None,
                     tags: list[dict[str, Any]], order: int | None = None) -> dict[str, Any]: ...

    def edit_corp_tag(self, id: str, *, name: str | None = None, order: int | None = None) -> None: ...

    def mark_tag(self, userid: str, external_userid: str, *, add: Sequence[str] = (),
                 remove: Sequence[str] = ()) -> None: ...


class ContactWayAPI(Protocol):
    """「联系我」 staff QR codes (reference §3.4)."""

    def add_contact_way(self, **payload: Any) -> dict[str, Any]: ...

    def del_contact_way(self, config_id: str) -> None: ...


class JoinWayAPI(Protocol):
    """「加入群聊」 group live codes (reference §3.6)."""

    def add_join_way(self, **payload: Any) -> str: ...

    def get_join_way(self, config_id: str) -> dict[str, Any]: ...

    def update_join_way(self, config_id: str, **payload: Any) -> None: ...


class StoreCodesAPI(ContactWayAPI, JoinWayAPI, CorpTagAPI, Protocol):
    """What stores' QR codes, store tags and store routing call."""


class WelcomeAPI(Protocol):
    """The new customer's welcome message (reference §3.8)."""

    def send_welcome_msg(self, welcome_code: str, *, text: str | None = None,
                         attachments: Sequence[Attachment] | None = None) -> None: ...


class ReadAPI(Protocol):
    """Reading members, customers and customer groups (sync and callbacks)."""

    def list_members(self) -> list[dict[str, Any]]: ...

    def list_follow_users(self) -> list[str]: ...

    def get_external_contact(self, external_userid: str) -> dict[str, Any]: ...

    def iter_contacts_by_users(self, userids: list[str], *,
                               unlicensed: set[str] | None = None) -> Iterator[dict[str, Any]]: ...

    def list_group_chats(self, *, status_filter: int = 0, owner_userids: list[str] | None = None,
                         limit: int = 1000) -> Iterator[dict[str, Any]]: ...

    def get_group_chat(self, chat_id: str, *, need_name: bool = True) -> dict[str, Any]: ...


class SyncAPI(ReadAPI, CorpTagAPI, Protocol):
    """What the full sync calls: members, customers, groups and the tag library."""


class CallbackAPI(ReadAPI, CorpTagAPI, WelcomeAPI, Protocol):
    """What the callback worker calls (fetches, the welcome, and store routing's tagging)."""


class ToolbarAPI(Protocol):
    """The owner's chat toolbar page: OAuth2 identity and the JS-SDK agent signature (§3.8a)."""

    def get_user_by_code(self, code: str) -> str: ...

    def get_agent_ticket(self, *, force_refresh: bool = False) -> dict[str, Any]: ...

    def jsapi_signature(self, ticket: str, noncestr: str, timestamp: int | str, url: str) -> str: ...


class WeComAPI(SopSendAPI, AppMessageAPI, StoreCodesAPI, SyncAPI, CallbackAPI, ToolbarAPI, Protocol):
    """Everything scrm calls on WeCom."""


__all__ = [
    "AppMessageAPI", "CallbackAPI", "ContactWayAPI", "CorpTagAPI", "JoinWayAPI", "MassSendAPI", "ReadAPI",
    "RobotAPI", "SopSendAPI", "StoreCodesAPI", "SyncAPI", "ToolbarAPI", "WeComAPI", "WelcomeAPI",
]

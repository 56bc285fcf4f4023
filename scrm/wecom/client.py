"""The one WeCom API client: thin, synchronous, on httpx (reference §3, §3.10, §3.11, §4.5).

Why not wechatpy's client: it retries token errors without limit, has no timeouts and hard-codes
the gettoken host. This client:

- fetches ``gettoken`` at ``base_url`` (production or the sandbox), caches the token in Redis
  (shared by every process) and in-process, and never logs the token or the secret;
- puts a timeout on every HTTP call; timeouts and connection errors raise ``TransportError``;
- refreshes the token and retries exactly once on 40014/42001/41001, then raises ``TokenError``;
  40001 from gettoken (bad secret) raises ``TokenError`` at once;
- backs off on 45009/45033 per ``backoff`` then raises ``RateLimited``; retries -1 up to 3 times,
  then raises ``SystemBusy``; any other non-zero errcode raises ``error_for(...)`` (typed);
- caches the app's JS-SDK ticket (``ticket/get?type=agent_config``) in Redis like the token, signs
  chat-toolbar pages (``jsapi_signature``) and resolves OAuth2 codes to member userids (reference §3.8a).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from scrm.wecom.errors import (
    RATE_ERRCODES,
    TOKEN_ERRCODES,
    RateLimited,
    SystemBusy,
    TokenError,
    TransportError,
    WeComAPIError,
    error_for,
)
from scrm.wecom.messages import (
    AppMessage,
    Attachment,
    GroupMsgTemplate,
    RobotMessage,
    SingleMsgTemplate,
    welcome_message,
)

if TYPE_CHECKING:
    from redis import Redis

    from scrm.config import Settings

log = structlog.get_logger(__name__)

BUSY_RETRIES = 3
# Calls to one API path in flight at once from one client (the setting wecom.max_in_flight_per_api):
# WeCom answers 45033 when one app has too many concurrent calls to an API.
MAX_IN_FLIGHT_PER_API = 32
# Refresh this long before WeCom's expiry (capped to a fraction of short lifetimes, e.g. in tests).
TOKEN_SAFETY_MARGIN = 300


class NotAMember(WeComAPIError):
    """``auth/getuserinfo`` answered for someone who is not a member of the corp (WeCom gives an
    ``openid``, and ``external_userid`` for a customer, instead of a ``userid``). errcode is 0: WeCom
    said ok; it is scrm that refuses a page visitor without a corp userid."""

    def __init__(self, *, openid: str = "", external_userid: str = "", path: str = ""):
        super().__init__(0, "the OAuth2 code belongs to a non-member (no userid)", path=path)
        self.openid = openid
        self.external_userid = external_userid


class InvalidOAuthCode(WeComAPIError):
    """40029: the OAuth2 code is unknown, was used already (codes are one-time) or expired (5 min)."""


OAUTH_INVALID_CODE = 40029


# WeCom refusals that answer the question (chat not found, group dismissed, invalid
# external_userid, not a contact of the member): logged at info; callers decide what they mean.
ANSWER_CODES = frozenset({40050, 49008, 40096, 84061})


def _token_ttl(expires_in: int) -> int:
    margin = min(TOKEN_SAFETY_MARGIN, expires_in // 10)
    return max(1, int(expires_in) - margin)


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


class WeComClient:
    def __init__(
        self,
        corp_id: str,
        secret: str,
        base_url: str,
        *,
        redis: Redis | None = None,
        timeout: float = 5.0,
        backoff: Sequence[float] = (1.0, 2.0, 4.0),
        http: httpx.Client | None = None,
        agent_id: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_in_flight_per_api: int = MAX_IN_FLIGHT_PER_API,
    ):
        if not secret:
            raise ValueError("WeCom secret is empty")
        self.corp_id = corp_id
        self._secret = secret
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.redis = redis
        self.timeout = timeout
        self.backoff = tuple(float(b) for b in backoff)
        self.agent_id = agent_id
        self._sleep = sleep
        if max_in_flight_per_api < 1:
            raise ValueError("max_in_flight_per_api must be at least 1")
        self.max_in_flight_per_api = int(max_in_flight_per_api)
        self._in_flight: dict[str, threading.BoundedSemaphore] = {}
        self._in_flight_lock = threading.Lock()
        self._owns_http = http is None
        # One connection pool per client (one client per process), kept warm for every thread that
        # may call at once: a connection closed after each call costs a TCP (and TLS) handshake.
        self._http = http if http is not None else httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self._token: str | None = None
        self._token_expires_at = 0.0  # time.monotonic()
        app = hashlib.sha256(secret.encode()).hexdigest()[:12]  # the app, named without its secret
        self.token_key = f"scrm:wecom:token:{corp_id}:{app}"
        # The agent_config ticket belongs to the app (its secret), like the token.
        self.agent_ticket_key = f"scrm:wecom:agent_ticket:{corp_id}:{app}"
        self._agent_ticket: str | None = None
        self._agent_ticket_expires_at = 0.0  # time.monotonic()

    def __repr__(self) -> str:  # never show the secret or token
        return f"WeComClient(corp_id={self.corp_id!r}, base_url={self.base_url!r})"

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None, **kwargs: Any) -> WeComClient:
        w = settings.wecom
        if not w.secret.get_secret_value():
            from scrm.config import ConfigError

            raise ConfigError("missing SCRM_WECOM__SECRET: set it in the environment or .scrm/secrets.env")
        opts: dict[str, Any] = dict(
            redis=redis,
            timeout=w.timeout_seconds,
            backoff=tuple(w.rate_limit_backoff_seconds),
            agent_id=w.agent_id,
            max_in_flight_per_api=w.max_in_flight_per_api,
        )
        opts.update(kwargs)
        return cls(w.corp_id, w.secret.get_secret_value(), w.api_base_url, **opts)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> WeComClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------
    def _slots(self, path: str) -> threading.BoundedSemaphore:
        """The in-flight bound of one API path (created on first use)."""
        slots = self._in_flight.get(path)
        if slots is None:
            with self._in_flight_lock:
                slots = self._in_flight.setdefault(path, threading.BoundedSemaphore(self.max_in_flight_per_api))
        return slots

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None,
              json: Mapping[str, Any] | None) -> dict[str, Any]:
        url = self.base_url + path.lstrip("/")
        try:
            with self._slots(path):  # at most max_in_flight_per_api calls to this path at once
                resp = self._http.request(method, url, params=params, json=json, timeout=self.timeout)
        except httpx.TimeoutException as exc:
            log.warning("wecom.timeout", path=path, timeout=self.timeout)
            raise TransportError(f"timeout after {self.timeout}s: {type(exc).__name__}", path=path) from exc
        except httpx.HTTPError as exc:
            log.warning("wecom.transport_error", path=path, error=type(exc).__name__)
            raise TransportError(f"{type(exc).__name__}: {exc}", path=path) from exc
        try:
            data = resp.json()
        except ValueError as exc:
            raise TransportError(f"HTTP {resp.status_code} with a non-JSON body", path=path) from exc
        if not isinstance(data, dict):
            raise TransportError(f"HTTP {resp.status_code} with a non-object JSON body", path=path)
        return data

    def _with_backoff(self, path: str, attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``attempt`` retrying 45009/45033 per ``backoff`` and -1 up to 3 times."""
        rate_tries = busy_tries = 0
        while True:
            data = attempt()
            errcode = int(data.get("errcode") or 0)
            if errcode in RATE_ERRCODES:
                if rate_tries >= len(self.backoff):
                    log.warning("wecom.rate_limited", path=path, errcode=errcode, tries=rate_tries + 1)
                    raise RateLimited(errcode, str(data.get("errmsg", "")), path=path)
                delay = self.backoff[rate_tries]
                rate_tries += 1
                log.info("wecom.backoff", path=path, errcode=errcode, sleep=delay)
                self._sleep(delay)
                continue
            if errcode == -1:
                if busy_tries >= BUSY_RETRIES:
                    log.warning("wecom.system_busy", path=path, errcode=errcode, tries=busy_tries + 1)
                    raise SystemBusy(errcode, str(data.get("errmsg", "")), path=path)
                delay = self.backoff[min(busy_tries, len(self.backoff) - 1)] if self.backoff else 0.0
                busy_tries += 1
                log.info("wecom.busy_retry", path=path, errcode=errcode, sleep=delay)
                self._sleep(delay)
                continue
            return data

    # -- token ---------------------------------------------------------------------------------
    def _redis_get(self, key: str | None = None) -> tuple[str | None, int]:
        key = key or self.token_key
        if self.redis is None:
            return None, 0
        try:
            value = self.redis.get(key)
            if value is None:
                return None, 0
            ttl = self.redis.ttl(key)
        except Exception as exc:  # Redis down: work without the shared cache
            log.warning("wecom.token_cache_unavailable", error=type(exc).__name__)
            return None, 0
        token = value.decode() if isinstance(value, bytes) else str(value)
        return token, int(ttl) if ttl and ttl > 0 else 1

    def _redis_set(self, token: str, ttl: int, key: str | None = None) -> None:
        if self.redis is None:
            return
        try:
            self.redis.set(key or self.token_key, token, ex=ttl)
        except Exception as exc:
            log.warning("wecom.token_cache_unavailable", error=type(exc).__name__)

    def _fetch_token(self) -> str:
        path = "gettoken"

        def attempt() -> dict[str, Any]:
            return self._send("GET", path, {"corpid": self.corp_id, "corpsecret": self._secret}, None)

        data = self._with_backoff(path, attempt)
        errcode = int(data.get("errcode") or 0)
        if errcode != 0 or not data.get("access_token"):
            log.error("wecom.gettoken_failed", path=path, errcode=errcode)
            raise TokenError(errcode, str(data.get("errmsg", "")), path=path)
        token = str(data["access_token"])
        ttl = _token_ttl(int(data.get("expires_in") or 7200))
        self._token, self._token_expires_at = token, time.monotonic() + ttl
        self._redis_set(token, ttl)
        log.info("wecom.token_fetched", corp_id=self.corp_id, ttl=ttl)
        return token

    def access_token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh:
            if self._token and time.monotonic() < self._token_expires_at:
                return self._token
            token, ttl = self._redis_get()
            if token:
                self._token, self._token_expires_at = token, time.monotonic() + ttl
                return token
        return self._fetch_token()

    def _refresh_after(self, stale: str) -> str:
        """Called after WeCom rejected ``stale``: take a newer shared token if another process has
        one, otherwise fetch a fresh one."""
        self._token, self._token_expires_at = None, 0.0
        token, ttl = self._redis_get()
        if token and token != stale:
            self._token, self._token_expires_at = token, time.monotonic() + ttl
            return token
        return self._fetch_token()

    # -- generic call --------------------------------------------------------------------------
    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Mapping[str, Any] | None = None) -> dict[str, Any]:
        method = method.upper()
        path = path.lstrip("/")
        state = {"token": self.access_token()}
        refreshed = False
        while True:
            data = self._with_backoff(
                path, lambda: self._send(method, path, {**(params or {}), "access_token": state["token"]}, json)
            )
            errcode = int(data.get("errcode") or 0)
            if errcode == 0:
                return data
            errmsg = str(data.get("errmsg", ""))
            if errcode in TOKEN_ERRCODES:
                if refreshed:
                    log.error("wecom.token_rejected_after_refresh", path=path, errcode=errcode)
                    raise TokenError(errcode, errmsg, path=path)
                refreshed = True
                log.info("wecom.token_refresh", path=path, errcode=errcode)
                state["token"] = self._refresh_after(state["token"])
                continue
            # "Not found" answers (a dismissed group, a customer who is not one) are facts the caller
            # acts on and logs with its own ids; anything else is worth a warning here.
            (log.info if errcode in ANSWER_CODES else log.warning)(
                "wecom.api_error", path=path, errcode=errcode, errmsg=errmsg)
            raise error_for(errcode, errmsg, path)

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, json={k: v for k, v in payload.items() if v is not None})

    # -- members -------------------------------------------------------------------------------
    def list_members(self) -> list[dict[str, Any]]:
        return list(self._get("user/list", department_id=1, fetch_child=1).get("userlist", []))

    def list_follow_users(self) -> list[str]:
        return list(self._get("externalcontact/get_follow_user_list").get("follow_user", []))

    # -- customers -----------------------------------------------------------------------------
    def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        follow: list[dict[str, Any]] = []
        cursor = ""
        contact: dict[str, Any] = {}
        seen: set[str] = set()
        while True:
            data = self._get("externalcontact/get", external_userid=external_userid, cursor=cursor or None)
            contact = data.get("external_contact") or contact
            follow.extend(data.get("follow_user") or [])
            cursor = data.get("next_cursor") or ""
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        return {"external_contact": contact, "follow_user": follow}

    def batch_get_by_user(self, userids: list[str], cursor: str = "", limit: int = 100) -> dict[str, Any]:
        if not userids or len(userids) > 100:
            raise ValueError("batch/get_by_user takes 1..100 userids")
        return self._post(
            "externalcontact/batch/get_by_user", {"userid_list": list(userids), "cursor": cursor, "limit": limit}
        )

    def iter_contacts_by_users(self, userids: list[str], *,
                               unlicensed: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every follow relation of ``userids``. Members WeCom skipped for want of a licence
        (``fail_info.unlicensed_userid_list``) are added to ``unlicensed``: their relations were
        not listed, which is not the same as not existing."""
        for chunk in _chunks(list(userids), 100):
            cursor = ""
            while True:
                data = self.batch_get_by_user(chunk, cursor=cursor)
                if unlicensed is not None:
                    unlicensed.update((data.get("fail_info") or {}).get("unlicensed_userid_list") or [])
                yield from data.get("external_contact_list") or []
                cursor = data.get("next_cursor") or ""
                if not cursor:
                    break

    # -- customer groups -----------------------------------------------------------------------
    def list_group_chats(
        self, *, status_filter: int = 0, owner_userids: list[str] | None = None, limit: int = 1000
    ) -> Iterator[dict[str, Any]]:
        owner_chunks: Iterable[list[str] | None] = _chunks(owner_userids, 100) if owner_userids else [None]
        for owners in owner_chunks:
            cursor = ""
            while True:
                payload: dict[str, Any] = {"status_filter": status_filter, "limit": limit, "cursor": cursor}
                if owners:
                    payload["owner_filter"] = {"userid_list": owners}
                data = self._post("externalcontact/groupchat/list", payload)
                yield from data.get("group_chat_list") or []
                cursor = data.get("next_cursor") or ""
                if not cursor:
                    break

    def get_group_chat(self, chat_id: str, *, need_name: bool = True) -> dict[str, Any]:
        data = self._post("externalcontact/groupchat/get", {"chat_id": chat_id, "need_name": 1 if need_name else 0})
        return data.get("group_chat") or {}

    # -- tags ----------------------------------------------------------------------------------
    def get_corp_tags(self, tag_ids: Sequence[str] | None = None,
                      group_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {}
        if tag_ids:
            payload["tag_id"] = list(tag_ids)
        if group_ids:
            payload["group_id"] = list(group_ids)
        return list(self._post("externalcontact/get_corp_tag_list", payload).get("tag_group") or [])

    def add_corp_tag(
        self, *, group_name: str | None = None, group_id: str | None = None, tags: list[dict[str, Any]],
        order: int | None = None,
    ) -> dict[str, Any]:
        if not group_name and not group_id:
            raise ValueError("add_corp_tag needs group_name or group_id")
        payload: dict[str, Any] = {"group_id": group_id, "group_name": group_name, "order": order, "tag": list(tags)}
        if self.agent_id is not None:
            payload["agentid"] = self.agent_id
        return self._post("externalcontact/add_corp_tag", payload).get("tag_group") or {}

    def edit_corp_tag(self, id: str, *, name: str | None = None, order: int | None = None) -> None:
        self._post("externalcontact/edit_corp_tag", {"id": id, "name": name, "order": order})

    def del_corp_tag(self, *, tag_ids: Sequence[str] | None = None, group_ids: Sequence[str] | None = None) -> None:
        if not tag_ids and not group_ids:
            raise ValueError("del_corp_tag needs tag_ids or group_ids")
        self._post("externalcontact/del_corp_tag", {"tag_id": list(tag_ids or []), "group_id": list(group_ids or [])})

    def mark_tag(self, userid: str, external_userid: str, *, add: Sequence[str] = (),
                 remove: Sequence[str] = ()) -> None:
        if not add and not remove:
            raise ValueError("mark_tag needs tags to add or remove")
        self._post(
            "externalcontact/mark_tag",
            {"userid": userid, "external_userid": external_userid, "add_tag": list(add), "remove_tag": list(remove)},
        )

    # -- 联系我 contact ways ---------------------------------------------------------------------
    def add_contact_way(self, **payload: Any) -> dict[str, Any]:
        data = self._post("externalcontact/add_contact_way", payload)
        return {"config_id": data.get("config_id"), "qr_code": data.get("qr_code")}

    def get_contact_way(self, config_id: str) -> dict[str, Any]:
        return self._post("externalcontact/get_contact_way", {"config_id": config_id}).get("contact_way") or {}

    def update_contact_way(self, config_id: str, **payload: Any) -> None:
        self._post("externalcontact/update_contact_way", {**payload, "config_id": config_id})

    def del_contact_way(self, config_id: str) -> None:
        self._post("externalcontact/del_contact_way", {"config_id": config_id})

    # -- 加入群聊 join ways ----------------------------------------------------------------------
    def add_join_way(self, **payload: Any) -> str:
        return str(self._post("externalcontact/groupchat/add_join_way", payload)["config_id"])

    def get_join_way(self, config_id: str) -> dict[str, Any]:
        return self._post("externalcontact/groupchat/get_join_way", {"config_id": config_id}).get("join_way") or {}

    def update_join_way(self, config_id: str, **payload: Any) -> None:
        self._post("externalcontact/groupchat/update_join_way", {**payload, "config_id": config_id})

    def del_join_way(self, config_id: str) -> None:
        self._post("externalcontact/groupchat/del_join_way", {"config_id": config_id})

    # -- mass messaging ------------------------------------------------------------------------
    def add_msg_template(self, payload: GroupMsgTemplate | SingleMsgTemplate) -> dict[str, Any]:
        """Create a mass-send task (build ``payload`` with ``messages.group_msg_template``)."""
        data = self._post("externalcontact/add_msg_template", payload)
        return {"msgid": data.get("msgid"), "fail_list": list(data.get("fail_list") or [])}

    def get_groupmsg_list_v2(self, **payload: Any) -> dict[str, Any]:
        return self._post("externalcontact/get_groupmsg_list_v2", payload)

    def get_groupmsg_task(self, msgid: str, cursor: str = "", limit: int = 1000) -> dict[str, Any]:
        return self._post("externalcontact/get_groupmsg_task", {"msgid": msgid, "cursor": cursor, "limit": limit})

    def get_groupmsg_send_result(self, msgid: str, userid: str, cursor: str = "",
                                 limit: int = 1000) -> dict[str, Any]:
        return self._post(
            "externalcontact/get_groupmsg_send_result",
            {"msgid": msgid, "userid": userid, "cursor": cursor, "limit": limit},
        )

    def send_robot_message(self, key: str, message: RobotMessage) -> None:
        """POST webhook/send?key=KEY: a message from a group robot (群机器人). The key is the robot's
        credential, so it is sent as WeCom asks and never logged; no access token is involved.
        WeCom allows 20 messages a minute per robot (45009 beyond, with the usual backoff)."""
        data = self._with_backoff("webhook/send", lambda: self._send("POST", "webhook/send", {"key": key}, message))
        errcode = int(data.get("errcode") or 0)
        if errcode:
            log.warning("wecom.api_error", path="webhook/send", errcode=errcode, errmsg=str(data.get("errmsg", "")))
            raise error_for(errcode, str(data.get("errmsg", "")), "webhook/send")

    def send_welcome_msg(self, welcome_code: str, *, text: str | None = None,
                         attachments: Sequence[Attachment] | None = None) -> None:
        """Welcome a new customer (once, within 20 s of the event); the body is built and its
        limits checked by ``messages.welcome_message`` (``MessageLimitError``, a ValueError)."""
        self._post("externalcontact/send_welcome_msg",
                   welcome_message(welcome_code, text=text, attachments=attachments or ()))

    # -- app messages (reference §3.8a) ----------------------------------------------------------
    def send_app_message(self, payload: AppMessage) -> dict[str, Any]:
        """``POST message/send``: e.g. ``{"touser": "a|b", "msgtype": "textcard", "textcard": {"title",
        "description", "url", "btntxt"}}``; ``agentid`` defaults to the client's ``agent_id``, and a
        list ``touser`` is joined with "|". Returns ``{"invaliduser": [userids], "msgid": ...}``:
        members WeCom did not deliver to (unknown or outside the app's visibility). 30 messages a
        minute to one member; beyond that WeCom answers 45009 (``RateLimited`` after the backoff)."""
        body: dict[str, Any] = dict(payload)
        if body.get("agentid") is None:
            if self.agent_id is None:
                raise ValueError("send_app_message needs payload['agentid'] or a client agent_id")
            body["agentid"] = self.agent_id
        if isinstance(body.get("touser"), (list, tuple)):
            body["touser"] = "|".join(body["touser"])
        data = self._post("message/send", body)
        invalid = data.get("invaliduser") or ""
        users = invalid if isinstance(invalid, list) else [u for u in str(invalid).split("|") if u]
        return {"invaliduser": users, "msgid": data.get("msgid")}

    # -- chat toolbar page: JS-SDK agent ticket and signature (reference §3.8a) ------------------
    def get_agent_ticket(self, *, force_refresh: bool = False) -> dict[str, Any]:
        """The app's jsapi ticket for ``wx.agentConfig``: ``{"ticket": ..., "expires_in": seconds}``.

        Cached in-process and in Redis under ``agent_ticket_key`` (no secret in the key) for a bit
        less than WeCom's ``expires_in``, so every process shares one ticket and WeCom is asked
        once when it is missing (ticket/get calls are few per hour). ``expires_in`` is what is left
        of the cached validity. ``force_refresh`` fetches a new one (e.g. the page's signature was
        refused). The ticket is a credential: it is never logged.
        """
        if not force_refresh:
            now = time.monotonic()
            if self._agent_ticket and now < self._agent_ticket_expires_at:
                return {"ticket": self._agent_ticket, "expires_in": max(1, int(self._agent_ticket_expires_at - now))}
            ticket, ttl = self._redis_get(self.agent_ticket_key)
            if ticket:
                self._agent_ticket, self._agent_ticket_expires_at = ticket, time.monotonic() + ttl
                return {"ticket": ticket, "expires_in": ttl}
        data = self._get("ticket/get", type="agent_config")
        if not data.get("ticket"):
            raise WeComAPIError(int(data.get("errcode") or 0), "ticket/get answered without a ticket",
                                path="ticket/get")
        ticket = str(data["ticket"])
        expires_in = int(data.get("expires_in") or 7200)
        ttl = _token_ttl(expires_in)
        self._agent_ticket, self._agent_ticket_expires_at = ticket, time.monotonic() + ttl
        self._redis_set(ticket, ttl, self.agent_ticket_key)
        log.info("wecom.agent_ticket_fetched", corp_id=self.corp_id, ttl=ttl)
        return {"ticket": ticket, "expires_in": expires_in}

    @staticmethod
    def jsapi_signature(ticket: str, noncestr: str, timestamp: int | str, url: str) -> str:
        """sha1 hex of ``jsapi_ticket=T&noncestr=N&timestamp=TS&url=URL``, the url without its
        ``#fragment`` (the signature ``wx.agentConfig``/``wx.config`` check)."""
        page = url.split("#", 1)[0]  # exactly the page's location.href before '#', not re-encoded
        raw = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={page}"
        return hashlib.sha1(raw.encode("utf-8")).hexdigest()

    # -- OAuth2: who opened the page (reference §3.8a) --------------------------------------------
    def get_user_by_code(self, code: str) -> str:
        """``GET auth/getuserinfo?code=CODE`` -> the member's ``userid``. A code is one-time and
        lives 5 minutes: unknown, used or expired raises ``InvalidOAuthCode`` (40029); a visitor
        who is not a corp member (``openid``/``external_userid``) raises ``NotAMember``."""
        if not code:
            raise ValueError("get_user_by_code needs the code WeCom put on the redirect")
        path = "auth/getuserinfo"
        try:
            data = self._get(path, code=code)
        except WeComAPIError as exc:
            if exc.errcode == OAUTH_INVALID_CODE:
                raise InvalidOAuthCode(exc.errcode, exc.errmsg, path=path) from exc
            raise
        # Current field names are lower case; older answers used UserId / OpenId.
        userid = data.get("userid") or data.get("UserId")
        if userid:
            return str(userid)
        raise NotAMember(openid=str(data.get("openid") or data.get("OpenId") or ""),
                         external_userid=str(data.get("external_userid") or ""), path=path)


if TYPE_CHECKING:
    from scrm.wecom.api import WeComAPI

    def _implements_the_boundary(client: WeComClient) -> WeComAPI:
        """Never called: mypy checks here that WeComClient satisfies every Protocol scrm calls
        WeCom through (a renamed method or a changed signature fails ``mypy scrm``)."""
        return client


__all__ = ["WeComClient", "WeComAPIError", "NotAMember", "InvalidOAuthCode"]

"""Which store, group, SOP post and template earned an order: one pure decision per order.

The rule, first match wins:

1. **last_click** — the customer's last *counted* click (a person's unique click: link previews,
   bots and repeats never count) on a tracked link within ``kpi.attribution_window_hours``
   (default 24 h) before the order was paid (``paid_at - window < clicked_at <= paid_at``; equal
   times go to the later click id). The order goes to that link's post, its group, its template
   and the group's store.
2. **from_param** — what the order itself says it came through: its ``link_code``, else its
   ``from`` parameter. ``link_code`` must be a tracked link's code. ``from`` may name
   - a tracked link's code (exactly as in ``/t/{code}``): that link's post, group, template, store;
   - ``post:<id>`` or ``post-<id>``: that SOP post (its group, template and the group's store);
   - ``chat:<chat_id>``: that customer group and its store;
   - ``store:<code>`` or a bare store code (case ignored): that store.
   Anything else is ignored (and named in the reason). This also attributes orders that matched
   no customer.
3. **customer_store** — the customer's store: the store whose QR code brought them (a follow
   relation whose ``state`` is a store state, ``st:<store>:<n>`` or ``sg:<store>``; the earliest such
   relation), else the store of a group they are a member of (the earliest joined). Store only:
   no group, post or template (the group rows carry what posts earned, not where buyers sit).
4. **unattributed** — none of the above.

The order's own ``store_code`` (where the shop says it was bought) is not used: it says where the
order was fulfilled, not what brought the customer.

The functions here take plain facts and do no I/O, so the rollups (:mod:`scrm.kpi.rollups`) and
the property tests feed them the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from scrm.kpi.report import AttributionRule, OrderAttribution


@dataclass(frozen=True)
class OrderFacts:
    order_pk: int
    source: str
    order_id: str
    paid_at: dt.datetime  # aware
    amount_fen: int
    external_userid: str | None  # the matched customer; None = unmatched
    link_code: str | None = None
    from_param: str | None = None


@dataclass(frozen=True)
class ClickFact:
    click_id: int
    code: str
    clicked_at: dt.datetime  # aware
    counted: bool
    external_userid: str | None


@dataclass(frozen=True)
class LinkFact:
    code: str
    post_id: int
    chat_id: str
    template_id: str


@dataclass(frozen=True)
class PostFact:
    post_id: int
    chat_id: str
    template_id: str
    at: dt.datetime | None = None  # when it was sent (or scheduled), for the reason


@dataclass(frozen=True)
class CustomerStore:
    store_code: str
    via: str  # "qr": a store QR code brought them; "group": a member of the store's group
    detail: str = ""  # the state, or the chat_id


@dataclass(frozen=True)
class Directory:
    """What codes and ids an order may name resolve to (tracked links, posts, groups, stores)."""

    links: Mapping[str, LinkFact] = field(default_factory=dict)
    posts: Mapping[int, PostFact] = field(default_factory=dict)
    group_stores: Mapping[str, str | None] = field(default_factory=dict)  # chat_id -> store code
    group_names: Mapping[str, str] = field(default_factory=dict)
    stores: Mapping[str, str] = field(default_factory=dict)  # store code -> name
    stores_by_lower: Mapping[str, str] = field(default_factory=dict, compare=False)  # filled from ``stores``

    def __post_init__(self) -> None:
        object.__setattr__(self, "stores_by_lower", {code.lower(): code for code in self.stores})


def _duration(delta: dt.timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} 小时 {minutes} 分钟"
    if hours:
        return f"{hours} 小时"
    return f"{minutes} 分钟"


def _local(at: dt.datetime, tz: ZoneInfo) -> str:
    t = at.astimezone(tz)
    return f"{t.month} 月 {t.day} 日 {t:%H:%M}"


def last_counted_click(order: OrderFacts, clicks: Iterable[ClickFact], links: Mapping[str, LinkFact],
                       window: dt.timedelta) -> ClickFact | None:
    """The customer's last counted click on a tracked link in ``(paid_at - window, paid_at]``."""
    if order.external_userid is None:
        return None
    best: ClickFact | None = None
    for c in clicks:
        if not c.counted or c.external_userid != order.external_userid or c.code not in links:
            continue
        if not (order.paid_at - window < c.clicked_at <= order.paid_at):
            continue
        if best is None or (c.clicked_at, c.click_id) > (best.clicked_at, best.click_id):
            best = c
    return best


def _group_text(directory: Directory, chat_id: str) -> str:
    name = directory.group_names.get(chat_id) or chat_id
    return f"群「{name}」"


def _from_target(order: OrderFacts, d: Directory) -> tuple[str, dict[str, object]] | None:
    """What the order's link_code / from names: (a Chinese phrase, the attribution's fields)."""
    stores_by_lower = d.stores_by_lower
    if order.link_code and order.link_code in d.links:
        link = d.links[order.link_code]
        return (f"订单带有帖子链接码 {link.code}（模板 {link.template_id}，{_group_text(d, link.chat_id)}）",
                dict(chat_id=link.chat_id, post_id=link.post_id, template_id=link.template_id,
                     store_code=d.group_stores.get(link.chat_id), link_code=link.code))
    raw = (order.from_param or "").strip()
    if not raw:
        return None
    if raw in d.links:
        link = d.links[raw]
        return (f"订单的 from 参数是帖子链接码 {link.code}（模板 {link.template_id}，{_group_text(d, link.chat_id)}）",
                dict(chat_id=link.chat_id, post_id=link.post_id, template_id=link.template_id,
                     store_code=d.group_stores.get(link.chat_id), link_code=link.code))
    kind, sep, value = raw.replace("-", ":", 1).partition(":") if raw.lower().startswith("post-") \
        else raw.partition(":")
    kind = kind.lower()
    if sep and kind == "post" and value.isdigit() and int(value) in d.posts:
        post = d.posts[int(value)]
        return (f"订单的 from 参数指向帖子 #{post.post_id}（模板 {post.template_id}，{_group_text(d, post.chat_id)}）",
                dict(chat_id=post.chat_id, post_id=post.post_id, template_id=post.template_id,
                     store_code=d.group_stores.get(post.chat_id)))
    if sep and kind == "chat" and value in d.group_stores:
        return (f"订单的 from 参数指向{_group_text(d, value)}",
                dict(chat_id=value, store_code=d.group_stores.get(value)))
    code = value if sep and kind == "store" else (raw if not sep else "")
    if code and code.lower() in stores_by_lower:
        store = stores_by_lower[code.lower()]
        return (f"订单的 from 参数指向门店 {store}（{d.stores[store]}）", dict(store_code=store))
    return None


def attribute(order: OrderFacts, clicks: Iterable[ClickFact], customer_store: CustomerStore | None,
              directory: Directory, *, window: dt.timedelta, tz: ZoneInfo) -> OrderAttribution:
    """Attribute one order by the rule in the module docstring. ``clicks`` may hold anything
    (other customers', uncounted, outside the window): the rule picks what counts."""
    base = dict(order_id=order.order_id, source=order.source, paid_at=order.paid_at, amount_fen=order.amount_fen)
    click = last_counted_click(order, clicks, directory.links, window)
    if click is not None:
        link = directory.links[click.code]
        sent = directory.posts.get(link.post_id)
        when = f"，{_local(sent.at, tz)} 发出" if sent is not None and sent.at is not None else ""
        reason = (f"下单前 {_duration(order.paid_at - click.clicked_at)}点击了模板 {link.template_id} 的帖子链接"
                  f"（{_group_text(directory, link.chat_id)}{when}），在 {window_hours(window)} 小时归因窗口内")
        return OrderAttribution(**base, rule=AttributionRule.last_click, reason=reason,  # type: ignore[arg-type]
                                store_code=directory.group_stores.get(link.chat_id), chat_id=link.chat_id,
                                post_id=link.post_id, template_id=link.template_id, link_code=link.code,
                                click_at=click.clicked_at, click_id=click.click_id)
    no_click = ("订单未匹配到客户" if order.external_userid is None
                else f"下单前 {window_hours(window)} 小时内客户没有计数的帖子点击")
    target = _from_target(order, directory)
    if target is not None:
        phrase, fields = target
        return OrderAttribution(**base, rule=AttributionRule.from_param,  # type: ignore[arg-type]
                                reason=f"{no_click}；{phrase}", **fields)  # type: ignore[arg-type]
    named = []
    if order.link_code:
        named.append(f"链接码 {order.link_code}")
    if order.from_param:
        named.append(f"from 参数 {order.from_param}")
    unknown = f"；订单的{'和'.join(named)}不对应已知的帖子、群或门店" if named else ""
    known = customer_store is not None and customer_store.store_code in directory.stores
    if order.external_userid is not None and customer_store is not None and known:
        store = customer_store.store_code
        how = ("客户是通过该门店的二维码添加的" if customer_store.via == "qr"
               else f"客户在该门店的{_group_text(directory, customer_store.detail)}中")
        where = f"归入客户所属门店 {store}（{directory.stores[store]}）：{how}"
        return OrderAttribution(**base, rule=AttributionRule.customer_store,  # type: ignore[arg-type]
                                reason=f"{no_click}{unknown}；{where}",
                                store_code=store)
    tail = "" if order.external_userid is None else "，也找不到客户所属门店"
    return OrderAttribution(**base, rule=AttributionRule.unattributed,  # type: ignore[arg-type]
                            reason=f"未归属：{no_click}{unknown}{tail}")


def window_hours(window: dt.timedelta) -> str:
    hours = window.total_seconds() / 3600
    return str(int(hours)) if hours == int(hours) else f"{hours:g}"

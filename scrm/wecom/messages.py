"""WeCom message payloads, built in one place with WeCom's field limits.

Every JSON body scrm sends as a message is made here: the mass-send task (``add_msg_template``),
its attachments (also the welcome message's), the group robot's text and news, and the app
message textcard that reminds an owner. The shapes are WeCom's (reference §3.7, §3.8, §3.8a);
the TypedDicts below spell them out, so mypy checks whatever reaches the client.

Two rules, from who wrote the text:
- text an operator wrote (an SOP post) is never cut: lint and render refuse it beyond a limit,
  and a builder that still meets it raises ``MessageLimitError`` rather than send half a post;
- text scrm composes (a reminder's lines, a card naming a store) is fitted with ``fit_bytes``,
  cut on a character boundary. WeCom cuts over-long textcard and robot news fields by itself
  (「超过会自动截断」), but by bytes, which can split a Chinese character (3 bytes in UTF-8).

Limits (bytes are UTF-8 bytes):

=====================================  =========  ==========================================
field                                  limit      source
=====================================  =========  ==========================================
add_msg_template / welcome text        4000 B     reference §3.7, §3.8 (doc 92135, 92137)
attachments per message                9          reference §3.7
link attachment title / desc           128 / 512  reference §3.7
miniprogram attachment title           64 B       reference §3.7
chat_id_list of a group mass send      2000       reference §3.7
app message textcard title / desc      128 / 512  reference §3.8a (message/send, doc 90236)
textcard btntxt                        4 chars    message/send doc 90236 (「不超过4个文字」)
robot text content                     2048 B     group robot doc 91770 (「最长不超过2048个字节」)
robot news articles                    1..8       doc 91770 (「一个图文消息支持1到8条图文」)
robot news title / description         128 / 512  doc 91770 (「超过会自动截断」)
=====================================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NotRequired, TypedDict

MAX_TEXT_BYTES = 4000
MAX_ATTACHMENTS = 9
MAX_LINK_TITLE_BYTES = 128
MAX_LINK_DESC_BYTES = 512
MAX_MINIPROGRAM_TITLE_BYTES = 64
MAX_CHATS_PER_TEMPLATE = 2000
MAX_TEXTCARD_TITLE_BYTES = 128
MAX_TEXTCARD_DESCRIPTION_BYTES = 512
MAX_TEXTCARD_BUTTON_CHARS = 4
MAX_ROBOT_TEXT_BYTES = 2048
MAX_NEWS_ARTICLES = 8
MAX_NEWS_TITLE_BYTES = 128
MAX_NEWS_DESCRIPTION_BYTES = 512

ELLIPSIS = "…"


class MessageLimitError(ValueError):
    """A message that breaks one of WeCom's limits and must not be cut to fit (or lacks a
    required field). The message names the field and the limit."""


# -- shapes ---------------------------------------------------------------------------------------
class TextContent(TypedDict):
    content: str


class Link(TypedDict):
    title: str
    url: str
    desc: NotRequired[str]
    picurl: NotRequired[str]


class LinkAttachment(TypedDict):
    msgtype: Literal["link"]
    link: Link


class MiniProgram(TypedDict):
    title: str
    appid: str
    page: str
    pic_media_id: NotRequired[str]


class MiniProgramAttachment(TypedDict):
    msgtype: Literal["miniprogram"]
    miniprogram: MiniProgram


class Image(TypedDict, total=False):
    media_id: str
    pic_url: str


class ImageAttachment(TypedDict):
    msgtype: Literal["image"]
    image: Image


Attachment = LinkAttachment | MiniProgramAttachment | ImageAttachment


class PostContent(TypedDict):
    """What a post says, in add_msg_template's shapes: an SOP step rendered for one group."""

    text: NotRequired[TextContent]
    attachments: list[Attachment]


class GroupMsgTemplate(TypedDict):
    """``POST externalcontact/add_msg_template`` for customer groups (reference §3.7)."""

    chat_type: Literal["group"]
    sender: str
    chat_id_list: list[str]
    text: NotRequired[TextContent]
    attachments: list[Attachment]


class SingleMsgTemplate(TypedDict):
    """``POST externalcontact/add_msg_template`` for customers one by one (chat_type single): the
    owner confirms it in the client; WeCom delivers one such message a customer a day."""

    chat_type: Literal["single"]
    sender: str
    external_userid: list[str]
    text: NotRequired[TextContent]
    attachments: list[Attachment]


class WelcomeMessage(TypedDict):
    """``POST externalcontact/send_welcome_msg`` (reference §3.8)."""

    welcome_code: str
    text: NotRequired[TextContent]
    attachments: NotRequired[list[Attachment]]


class NewsArticle(TypedDict):
    title: str
    url: str
    description: NotRequired[str]
    picurl: NotRequired[str]


class News(TypedDict):
    articles: list[NewsArticle]


class RobotText(TypedDict):
    msgtype: Literal["text"]
    text: TextContent


class RobotNews(TypedDict):
    msgtype: Literal["news"]
    news: News


RobotMessage = RobotText | RobotNews


class TextCard(TypedDict):
    title: str
    description: str
    url: str
    btntxt: NotRequired[str]


class AppTextCardMessage(TypedDict):
    """``POST message/send`` with a textcard (reference §3.8a). ``agentid`` may be left to the
    client, which fills in its own."""

    touser: str
    msgtype: Literal["textcard"]
    textcard: TextCard
    agentid: NotRequired[int]


class AppTextMessage(TypedDict):
    touser: str
    msgtype: Literal["text"]
    text: TextContent
    agentid: NotRequired[int]


AppMessage = AppTextCardMessage | AppTextMessage


# -- sizes ----------------------------------------------------------------------------------------
def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def fit_bytes(text: str, limit: int, *, ellipsis: str = ELLIPSIS) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its longest prefix that fits with
    ``ellipsis`` after it, cut between characters (never inside one)."""
    if utf8_len(text) <= limit:
        return text
    room = limit - utf8_len(ellipsis)
    if room < 0:
        raise ValueError(f"a limit of {limit} bytes leaves no room for {ellipsis!r}")
    head = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")  # drops a split last character
    return head + ellipsis


def split_bytes(text: str, limit: int) -> list[str]:
    """``text`` as pieces of at most ``limit`` UTF-8 bytes, split at line ends where possible
    (a line longer than ``limit`` is split between characters). Nothing is lost but the line
    breaks the pieces were split at (and pieces that are only blanks); empty text gives none."""
    if limit < 4:
        raise ValueError("a piece must hold at least one character (4 bytes)")
    pieces: list[str] = []
    current: str | None = None
    for line in text.split("\n"):
        while utf8_len(line) > limit:
            head = line.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
            if current is not None:
                pieces.append(current)
                current = None
            pieces.append(head)
            line = line[len(head):]
        if current is None:
            current = line
        elif utf8_len(current) + 1 + utf8_len(line) <= limit:
            current = f"{current}\n{line}"
        else:
            pieces.append(current)
            current = line
    if current is not None:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def _refuse_over(field: str, value: str, limit: int) -> None:
    size = utf8_len(value)
    if size > limit:
        raise MessageLimitError(f"{field} is {size:,} bytes; WeCom allows at most {limit:,} "
                                "(a Chinese character is 3 bytes)")


def _require(field: str, value: str) -> None:
    if not value:
        raise MessageLimitError(f"{field} is required")


# -- add_msg_template / send_welcome_msg attachments (reference §3.7) ------------------------------
def link_attachment(title: str, url: str, *, desc: str = "", picurl: str = "") -> LinkAttachment:
    """A link card. Empty ``desc``/``picurl`` are left out. Title over 128 bytes or desc over
    512 bytes raise ``MessageLimitError`` (fit composed text with ``fit_bytes`` first)."""
    _require("link.title", title)
    _require("link.url", url)
    _refuse_over("link.title", title, MAX_LINK_TITLE_BYTES)
    _refuse_over("link.desc", desc, MAX_LINK_DESC_BYTES)
    link: Link = {"title": title, "url": url}
    if picurl:
        link["picurl"] = picurl
    if desc:
        link["desc"] = desc
    return {"msgtype": "link", "link": link}


def miniprogram_attachment(title: str, appid: str, page: str, *, pic_media_id: str = "") -> MiniProgramAttachment:
    """A mini-program card; title at most 64 bytes, the appid linked to the corp."""
    _require("miniprogram.title", title)
    _require("miniprogram.appid", appid)
    _require("miniprogram.page", page)
    _refuse_over("miniprogram.title", title, MAX_MINIPROGRAM_TITLE_BYTES)
    mp: MiniProgram = {"title": title, "appid": appid, "page": page}
    if pic_media_id:
        mp["pic_media_id"] = pic_media_id
    return {"msgtype": "miniprogram", "miniprogram": mp}


def image_attachment(*, media_id: str = "", pic_url: str = "") -> ImageAttachment:
    """An image: a ``media_id`` from media/upload (valid 3 days) or a ``pic_url`` from
    media/uploadimg, exactly one of them."""
    if bool(media_id) == bool(pic_url):
        raise MessageLimitError("image needs exactly one of media_id and pic_url")
    return {"msgtype": "image", "image": {"media_id": media_id} if media_id else {"pic_url": pic_url}}


def _check_attachments(attachments: Sequence[Attachment]) -> None:
    if len(attachments) > MAX_ATTACHMENTS:
        raise MessageLimitError(f"{len(attachments)} attachments; WeCom allows at most {MAX_ATTACHMENTS}")
    for a in attachments:  # also the ones not made by the builders above
        if a["msgtype"] == "link":
            _refuse_over("link.title", a["link"]["title"], MAX_LINK_TITLE_BYTES)
            _refuse_over("link.desc", a["link"].get("desc", ""), MAX_LINK_DESC_BYTES)
        elif a["msgtype"] == "miniprogram":
            _refuse_over("miniprogram.title", a["miniprogram"]["title"], MAX_MINIPROGRAM_TITLE_BYTES)


def post_content(text: str | None, attachments: Sequence[Attachment] = ()) -> PostContent:
    """A post: its text (left out when empty) and up to 9 attachments; text over 4000 bytes
    raises. At least one of them."""
    if not text and not attachments:
        raise MessageLimitError("a message needs text or attachments")
    _check_attachments(attachments)
    content: PostContent = {"attachments": list(attachments)}
    if text:
        _refuse_over("text.content", text, MAX_TEXT_BYTES)
        content["text"] = {"content": text}
    return content


def group_msg_template(sender: str, chat_ids: Sequence[str], content: PostContent) -> GroupMsgTemplate:
    """The mass-send task for up to 2000 customer groups of one ``sender`` (their owner). WeCom
    only creates the task; the owner confirms it in the client (reference §3.7)."""
    _require("sender", sender)
    if not 1 <= len(chat_ids) <= MAX_CHATS_PER_TEMPLATE:
        raise MessageLimitError(f"chat_id_list holds {len(chat_ids)} groups; WeCom takes 1 to {MAX_CHATS_PER_TEMPLATE}")
    checked = post_content(content["text"]["content"] if "text" in content else None, content["attachments"])
    body: GroupMsgTemplate = {"chat_type": "group", "sender": sender, "chat_id_list": list(chat_ids),
                              "attachments": checked["attachments"]}
    if "text" in checked:
        body["text"] = checked["text"]
    return body


def welcome_message(welcome_code: str, *, text: str | None = None,
                    attachments: Sequence[Attachment] = ()) -> WelcomeMessage:
    """The new customer's welcome (send_welcome_msg, within 20 s of the event, once): text at
    most 4000 bytes and up to 9 attachments, at least one of them."""
    _require("welcome_code", welcome_code)
    checked = post_content(text, attachments)
    body: WelcomeMessage = {"welcome_code": welcome_code}
    if "text" in checked:
        body["text"] = checked["text"]
    if checked["attachments"]:
        body["attachments"] = checked["attachments"]
    return body


# -- group robot (webhook/send, doc 91770) ---------------------------------------------------------
class ChatNews(TypedDict):
    link: str
    title: str
    desc: str
    imgUrl: str  # noqa: N815 - the JS-SDK's field name


class ChatMiniProgram(TypedDict):
    appid: str
    title: str
    imgUrl: str  # noqa: N815
    page: str


class ChatMessage(TypedDict):
    """One ``wx.invoke('sendChatMessage', …)`` message (reference §3.8a), without ``enterChat``."""

    msgtype: Literal["text", "news", "miniprogram", "image"]
    text: NotRequired[TextContent]
    news: NotRequired[ChatNews]
    miniprogram: NotRequired[ChatMiniProgram]
    image: NotRequired[dict[str, str]]  # {"mediaid": …}


def chat_messages(content: PostContent) -> list[tuple[Attachment | None, ChatMessage]]:
    """A post as the owner's page sends it into the open chat with the JS-SDK: the text, then one
    message per attachment, in order; each paired with the attachment it came from (None for the
    text). A link becomes a ``news`` card; an image goes only by ``media_id`` (the JS-SDK has no
    image URL). WeCom's sendChatMessage answers only whether the message was placed in the chat;
    the owner still taps send in the client."""
    out: list[tuple[Attachment | None, ChatMessage]] = []
    text = content.get("text")
    if text and text.get("content"):
        out.append((None, {"msgtype": "text", "text": {"content": text["content"]}}))
    for a in content.get("attachments", []):
        if a["msgtype"] == "link":
            link = a["link"]
            news: ChatNews = {"link": link["url"], "title": link["title"], "desc": link.get("desc", ""),
                              "imgUrl": link.get("picurl", "")}
            out.append((a, {"msgtype": "news", "news": news}))
        elif a["msgtype"] == "miniprogram":
            mp = a["miniprogram"]
            out.append((a, {"msgtype": "miniprogram", "miniprogram": {"appid": mp["appid"], "title": mp["title"],
                                                                      "imgUrl": "", "page": mp["page"]}}))
        elif a["msgtype"] == "image" and a["image"].get("media_id"):
            out.append((a, {"msgtype": "image", "image": {"mediaid": a["image"]["media_id"]}}))
    return out


def robot_text(content: str) -> RobotText:
    """One robot text message: at most 2048 bytes (``robot_messages`` splits longer posts)."""
    _require("text.content", content)
    _refuse_over("text.content", content, MAX_ROBOT_TEXT_BYTES)
    return {"msgtype": "text", "text": {"content": content}}


def news_article(title: str, url: str, *, description: str = "", picurl: str = "") -> NewsArticle:
    """One article of a robot news message; title and description fitted to 128 / 512 bytes
    (WeCom would cut them itself, possibly inside a character). Empty optional fields are left out."""
    _require("news.articles[].title", title)
    _require("news.articles[].url", url)
    article: NewsArticle = {"title": fit_bytes(title, MAX_NEWS_TITLE_BYTES), "url": url}
    if description:
        article["description"] = fit_bytes(description, MAX_NEWS_DESCRIPTION_BYTES)
    if picurl:
        article["picurl"] = picurl
    return article


def robot_news(articles: Sequence[NewsArticle]) -> RobotNews:
    """One robot news message of 1 to 8 articles."""
    if not 1 <= len(articles) <= MAX_NEWS_ARTICLES:
        raise MessageLimitError(f"news holds {len(articles)} articles; WeCom takes 1 to {MAX_NEWS_ARTICLES}")
    return {"msgtype": "news", "news": {"articles": list(articles)}}


def robot_messages(content: PostContent) -> list[RobotMessage]:
    """A post as the group robot sends it: its text (in pieces of at most 2048 bytes, split at
    line ends, when longer), then its link cards as news of at most 8 articles each. Robots
    can't send mini-program cards or images by media_id; those are left out."""
    messages: list[RobotMessage] = []
    if "text" in content:
        messages.extend(robot_text(piece) for piece in split_bytes(content["text"]["content"], MAX_ROBOT_TEXT_BYTES))
    articles = [news_article(a["link"]["title"], a["link"]["url"], description=a["link"].get("desc", ""),
                             picurl=a["link"].get("picurl", ""))
                for a in content["attachments"] if a["msgtype"] == "link"]
    for i in range(0, len(articles), MAX_NEWS_ARTICLES):
        messages.append(robot_news(articles[i:i + MAX_NEWS_ARTICLES]))
    return messages


# -- app messages (message/send, reference §3.8a) --------------------------------------------------
def textcard(title: str, description: str, url: str, *, btntxt: str = "") -> TextCard:
    """A textcard: title fitted to 128 bytes, description to 512 (WeCom would cut them by bytes),
    ``btntxt`` at most 4 characters (WeCom's default 「详情」 when empty)."""
    _require("textcard.title", title)
    _require("textcard.description", description)
    _require("textcard.url", url)
    card: TextCard = {"title": fit_bytes(title, MAX_TEXTCARD_TITLE_BYTES),
                      "description": fit_bytes(description, MAX_TEXTCARD_DESCRIPTION_BYTES), "url": url}
    if btntxt:
        if len(btntxt) > MAX_TEXTCARD_BUTTON_CHARS:
            raise MessageLimitError(f"textcard.btntxt {btntxt!r} is over {MAX_TEXTCARD_BUTTON_CHARS} characters")
        card["btntxt"] = btntxt
    return card


def textcard_message(touser: str | Iterable[str], card: TextCard, *, agentid: int | None = None
                     ) -> AppTextCardMessage:
    """message/send of ``card`` to members (a userid, or several joined with "|")."""
    users = touser if isinstance(touser, str) else "|".join(touser)
    _require("touser", users)
    message: AppTextCardMessage = {"touser": users, "msgtype": "textcard", "textcard": card}
    if agentid is not None:
        message["agentid"] = agentid
    return message


__all__ = [
    "AppMessage", "AppTextCardMessage", "AppTextMessage", "Attachment", "GroupMsgTemplate", "ImageAttachment",
    "LinkAttachment", "MessageLimitError", "MiniProgramAttachment", "NewsArticle", "PostContent", "RobotMessage",
    "RobotNews", "RobotText", "TextCard", "TextContent", "WelcomeMessage",
    "fit_bytes", "group_msg_template", "image_attachment", "link_attachment", "miniprogram_attachment",
    "news_article", "post_content", "robot_messages", "robot_news", "robot_text", "split_bytes", "textcard",
    "textcard_message", "utf8_len", "welcome_message",
]

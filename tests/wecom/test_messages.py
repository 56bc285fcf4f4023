"""The WeCom message builders (scrm.wecom.messages): exact JSON shapes per the reference, and
WeCom's limits enforced (operator text refused, composed text fitted on a character boundary).

The byte counts below are written out by hand (a Chinese character is 3 UTF-8 bytes), not
computed with the module's own helpers, so a wrong helper can't agree with itself.

Mutations tried, each made a test here fail, then restored:
- ``fit_bytes`` slicing characters instead of bytes (``text[:room]``): test_fit_bytes_*;
- MAX_NEWS_ARTICLES = 9: test_robot_news_holds_one_to_eight_articles, test_robot_messages_*;
- ``textcard`` not fitting the description: test_textcard_fits_title_and_description;
- ``link_attachment`` writing ``description`` instead of ``desc``: test_link_attachment_exact_shape;
- ``split_bytes`` dropping the last piece: test_robot_messages_split_long_text_losing_nothing.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scrm.wecom import messages as m

HAN = "字"  # 3 bytes in UTF-8


# -- fitting and splitting ----------------------------------------------------------------------------
def test_fit_bytes_leaves_short_text_alone_and_cuts_between_characters():
    assert m.fit_bytes("加入南京西路店福利群", 128) == "加入南京西路店福利群"
    # 50 Han characters are 150 bytes; 128 leaves 125 for text before the 3-byte "…": 41 characters.
    cut = m.fit_bytes(HAN * 50, 128)
    assert cut == HAN * 41 + "…"
    assert len(cut.encode("utf-8")) == 126
    # A mixed string: never half a character, whatever the limit.
    for limit in range(3, 40):
        out = m.fit_bytes("ab字cd字字e" * 3, limit)
        assert len(out.encode("utf-8")) <= limit
        out.encode("utf-8").decode("utf-8")  # valid UTF-8


@given(st.text(min_size=0, max_size=300), st.integers(min_value=3, max_value=600))
def test_fit_bytes_property(text, limit):
    out = m.fit_bytes(text, limit)
    assert len(out.encode("utf-8")) <= limit
    if len(text.encode("utf-8")) <= limit:
        assert out == text
    else:
        assert out.endswith("…") and text.startswith(out[:-1])


@given(st.text(alphabet=st.sampled_from("a字\n 😀"), max_size=400), st.integers(min_value=4, max_value=120))
def test_split_bytes_property(text, limit):
    pieces = m.split_bytes(text, limit)
    assert all(0 < len(p.encode("utf-8")) <= limit for p in pieces)
    # Oracle: the pieces hold every character of the text in order; only newlines at the cuts and
    # blank-only pieces may be gone.
    assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)


# -- add_msg_template and its attachments (reference §3.7) ---------------------------------------------
def test_link_attachment_exact_shape():
    assert m.link_attachment("午餐券", "https://m.example.com/lunch") == {
        "msgtype": "link", "link": {"title": "午餐券", "url": "https://m.example.com/lunch"}}
    full = m.link_attachment("午餐券", "https://m.example.com/lunch", desc="12 点前有效", picurl="https://img/x.png")
    assert full == {"msgtype": "link", "link": {"title": "午餐券", "url": "https://m.example.com/lunch",
                                                "desc": "12 点前有效", "picurl": "https://img/x.png"}}


def test_link_attachment_refuses_over_the_byte_limits():
    m.link_attachment(HAN * 42 + "ab", "https://x")  # 128 bytes: fits
    with pytest.raises(m.MessageLimitError, match="link.title is 129 bytes; WeCom allows at most 128"):
        m.link_attachment(HAN * 43, "https://x")
    m.link_attachment("t", "https://x", desc=HAN * 170 + "ab")  # 512 bytes
    with pytest.raises(m.MessageLimitError, match="link.desc is 513 bytes"):
        m.link_attachment("t", "https://x", desc=HAN * 171)
    with pytest.raises(m.MessageLimitError, match="link.url is required"):
        m.link_attachment("t", "")


def test_miniprogram_and_image_attachments():
    assert m.miniprogram_attachment("早餐", "wx8bd80126147dfAAA", "/pages/index") == {
        "msgtype": "miniprogram",
        "miniprogram": {"title": "早餐", "appid": "wx8bd80126147dfAAA", "page": "/pages/index"}}
    with pytest.raises(m.MessageLimitError, match="miniprogram.title is 66 bytes; WeCom allows at most 64"):
        m.miniprogram_attachment(HAN * 22, "wx1", "/p")
    assert m.image_attachment(media_id="MEDIA") == {"msgtype": "image", "image": {"media_id": "MEDIA"}}
    assert m.image_attachment(pic_url="https://p/x.png") == {"msgtype": "image", "image": {"pic_url": "https://p/x.png"}}
    with pytest.raises(m.MessageLimitError):
        m.image_attachment(media_id="a", pic_url="b")


def test_group_msg_template_exact_shape_and_limits():
    content = m.post_content("今日早餐 8 折", [m.link_attachment("早餐券", "https://m.example.com/b")])
    body = m.group_msg_template("zhangsan", ["wr1", "wr2"], content)
    assert body == {"chat_type": "group", "sender": "zhangsan", "chat_id_list": ["wr1", "wr2"],
                    "text": {"content": "今日早餐 8 折"},
                    "attachments": [{"msgtype": "link", "link": {"title": "早餐券", "url": "https://m.example.com/b"}}]}
    json.dumps(body, ensure_ascii=False)  # plain JSON
    assert "text" not in m.group_msg_template("zhangsan", ["wr1"], m.post_content(None, [m.image_attachment(
        media_id="M")]))
    with pytest.raises(m.MessageLimitError, match="chat_id_list holds 2001 groups; WeCom takes 1 to 2000"):
        m.group_msg_template("zhangsan", [f"wr{i}" for i in range(2001)], content)
    with pytest.raises(m.MessageLimitError, match="chat_id_list holds 0"):
        m.group_msg_template("zhangsan", [], content)
    with pytest.raises(m.MessageLimitError, match="text.content is 4,002 bytes; WeCom allows at most 4,000"):
        m.post_content(HAN * 1334, [])
    m.post_content(HAN * 1333 + "a", [])  # 4000 bytes
    with pytest.raises(m.MessageLimitError, match="10 attachments; WeCom allows at most 9"):
        m.post_content("x", [m.image_attachment(media_id="M")] * 10)
    with pytest.raises(m.MessageLimitError, match="needs text or attachments"):
        m.post_content("", [])


def test_welcome_message_exact_shape():
    card = m.link_attachment("加入南京西路店福利群", "https://scrm/g/SH001")
    assert m.welcome_message("WC", text="你好", attachments=[card]) == {
        "welcome_code": "WC", "text": {"content": "你好"}, "attachments": [card]}
    assert m.welcome_message("WC", text="你好") == {"welcome_code": "WC", "text": {"content": "你好"}}
    with pytest.raises(m.MessageLimitError):
        m.welcome_message("WC")


# -- group robot (doc 91770) ---------------------------------------------------------------------------
def test_robot_text_and_news_exact_shape():
    assert m.robot_text("午间福利") == {"msgtype": "text", "text": {"content": "午间福利"}}
    with pytest.raises(m.MessageLimitError, match="text.content is 2,049 bytes; WeCom allows at most 2,048"):
        m.robot_text(HAN * 683)
    article = m.news_article("午餐券", "https://scrm/t/abc", description="", picurl="")
    assert article == {"title": "午餐券", "url": "https://scrm/t/abc"}
    assert m.robot_news([article]) == {"msgtype": "news", "news": {"articles": [article]}}
    long = m.news_article(HAN * 50, "https://u", description=HAN * 200)
    assert long["title"] == HAN * 41 + "…" and len(long["description"].encode()) <= 512


def test_robot_news_holds_one_to_eight_articles():
    a = m.news_article("t", "https://u")
    assert len(m.robot_news([a] * 8)["news"]["articles"]) == 8
    with pytest.raises(m.MessageLimitError, match="news holds 9 articles; WeCom takes 1 to 8"):
        m.robot_news([a] * 9)
    with pytest.raises(m.MessageLimitError):
        m.robot_news([])


def test_robot_messages_send_text_then_links_in_news_of_at_most_eight():
    links = [m.link_attachment(f"券{i}", f"https://u/{i}", desc="d" if i == 0 else "") for i in range(9)]
    content = m.post_content("午间福利", [*links[:4], m.miniprogram_attachment("小程序", "wx1", "/p")])
    messages = m.robot_messages(content)
    assert messages == [
        {"msgtype": "text", "text": {"content": "午间福利"}},
        {"msgtype": "news", "news": {"articles": [
            {"title": "券0", "url": "https://u/0", "description": "d"},
            {"title": "券1", "url": "https://u/1"}, {"title": "券2", "url": "https://u/2"},
            {"title": "券3", "url": "https://u/3"}]}},
    ]  # the mini program card is left out: robots can't send it
    nine = m.robot_messages({"attachments": list(links)})  # 9 links: a 9th article would be refused by WeCom
    assert [len(x["news"]["articles"]) for x in nine if x["msgtype"] == "news"] == [8, 1]


def test_robot_messages_split_long_text_losing_nothing():
    lines = [f"第{i}行" + HAN * 100 for i in range(10)]  # 10 lines of ~310 bytes: 3,100 bytes in all
    messages = m.robot_messages(m.post_content("\n".join(lines), []))
    texts = [x["text"]["content"] for x in messages if x["msgtype"] == "text"]
    assert len(texts) == 2 and all(len(t.encode("utf-8")) <= 2048 for t in texts)
    assert "\n".join(texts) == "\n".join(lines)  # split at a line end: joined back, it is the post


# -- app message textcard (reference §3.8a) --------------------------------------------------------
def test_textcard_exact_shape():
    card = m.textcard("有 2 个群的 SOP 内容待发送", "三里屯店福利群1 · 11:54 下午茶", "https://scrm/toolbar",
                      btntxt="去发送")
    assert card == {"title": "有 2 个群的 SOP 内容待发送", "description": "三里屯店福利群1 · 11:54 下午茶",
                    "url": "https://scrm/toolbar", "btntxt": "去发送"}
    assert m.textcard_message("zhangsan", card) == {"touser": "zhangsan", "msgtype": "textcard", "textcard": card}
    assert m.textcard_message(["a", "b"], card, agentid=1000002) == {
        "touser": "a|b", "msgtype": "textcard", "textcard": card, "agentid": 1000002}
    assert "btntxt" not in m.textcard("t", "d", "https://u")  # WeCom's default 详情


def test_textcard_fits_title_and_description():
    card = m.textcard(HAN * 50, HAN * 200, "https://u")
    assert card["title"] == HAN * 41 + "…"  # 126 bytes
    assert len(card["description"].encode("utf-8")) == 510 and card["description"].endswith("…")  # 169 字 + …
    with pytest.raises(m.MessageLimitError, match="btntxt"):
        m.textcard("t", "d", "https://u", btntxt="现在去发送")
    with pytest.raises(m.MessageLimitError, match="textcard.url is required"):
        m.textcard("t", "d", "")


def test_chat_messages_are_the_js_sdk_shapes_in_order_and_skip_what_it_cannot_send():
    """The toolbar page sends exactly these with wx.invoke('sendChatMessage') (reference §3.8a).
    Tried: a link sent as ``link`` instead of ``news`` and ``desc`` renamed — both fail here."""
    from scrm.wecom.messages import chat_messages

    content = {
        "text": {"content": "午餐套餐来了"},
        "attachments": [
            {"msgtype": "link", "link": {"title": "午餐券", "url": "https://m.example.com/t/x", "desc": "满 30 减 5"}},
            {"msgtype": "image", "image": {"pic_url": "https://img.example.com/a.png"}},  # no media_id: skipped
            {"msgtype": "miniprogram", "miniprogram": {"title": "点单", "appid": "wx123", "page": "pages/menu",
                                                       "pic_media_id": "m1"}},
            {"msgtype": "image", "image": {"media_id": "img-1"}},
        ],
    }
    sent = chat_messages(content)
    assert [m for _, m in sent] == [
        {"msgtype": "text", "text": {"content": "午餐套餐来了"}},
        {"msgtype": "news", "news": {"link": "https://m.example.com/t/x", "title": "午餐券", "desc": "满 30 减 5",
                                     "imgUrl": ""}},
        {"msgtype": "miniprogram", "miniprogram": {"appid": "wx123", "title": "点单", "imgUrl": "",
                                                   "page": "pages/menu"}},
        {"msgtype": "image", "image": {"mediaid": "img-1"}},
    ]
    assert [a["msgtype"] if a else None for a, _ in sent] == [None, "link", "miniprogram", "image"]
    assert chat_messages({"attachments": [{"msgtype": "image", "image": {"pic_url": "https://x/y.png"}}]}) == []

"""Rendering SOP steps: the WeCom payload a group receives, its limits, and hostile templates.

Operators' templates run inside the sender for every group, so besides "the store name fills in"
these tests try the known Jinja sandbox escapes and resource bombs and check each is refused with
a readable message, and that nothing a template can do prints Python internals.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from scrm.sop.render import (
    TemplateRenderError,
    build_context,
    render_field,
    render_step,
    sample_context,
)
from scrm.sop.template import SopTemplate

STORE = {"code": "SH0231", "name": "瑞幸咖啡(南京西路店)", "address": "上海市静安区南京西路1266号", "city": "上海"}
GROUP = {"chat_id": "wrOgQhDgAAcwMTB7YmDk", "name": "南京西路店福利1群", "owner": "zhangwei"}
DAY = dt.date(2026, 12, 1)  # a Tuesday


def make(*steps: dict, **extra) -> SopTemplate:
    return SopTemplate.model_validate({"id": "t1", "name": "测试模板", "steps": list(steps), **extra})


def ctx(template: SopTemplate, *, store=STORE, group=GROUP, day=DAY, at="08:00") -> dict:
    return build_context(group=group, store=store, day=day, at=at, template=template)


# --------------------------------------------------------------------------------------------
# Context


def test_context_is_plain_strings_with_chinese_weekday_and_normalised_time():
    t = make({"at": "8:00", "text": "x"})
    c = build_context(group={"chat_id": "wr1", "name": "一群", "owner": None}, store=STORE, day=DAY, at="8:00",
                      template=t)
    assert c == {
        "store": STORE,
        "group": {"chat_id": "wr1", "name": "一群", "owner": ""},  # no owner: empty, not "None"
        "date": "2026-12-01",
        "weekday": "周二",
        "time": "08:00",
        "template": {"id": "t1", "name": "测试模板"},
    }


def test_group_without_store_renders_empty_store_fields():
    t = make({"at": "08:00", "text": "【{{ store.name }}】{{ store.city }}|{{ group.name }}"})
    payload = render_step(t, 0, ctx(t, store=None))
    assert payload["text"]["content"] == "【】|南京西路店福利1群"


def test_store_and_date_variables_fill_in():
    t = make({"at": "15:00", "text": "{{ weekday }} {{ time }} {{ store.name }}（{{ store.address }}）{{ date }} "
                                     "{{ template.name }}"})
    payload = render_step(t, 0, ctx(t, at="15:00"))
    assert payload["text"]["content"] == ("周二 15:00 瑞幸咖啡(南京西路店)（上海市静安区南京西路1266号）"
                                          "2026-12-01 测试模板")


def test_filters_and_conditions_operators_use():
    t = make({"at": "08:00", "text": "{{ group.owner|default('店长', true)|upper }} {{ store.name|truncate(6) }} "
                                     "{{ store.name[:4] }} {{ store.code|replace('SH', '沪') }} {{ 12.9 * 2 }}\n"
                                     "{% if weekday == '周二' %}\n周二特惠\n{% else %}\n日常\n{% endif %}\n"
                                     "https://m.example.com/?s={{ store.name|urlencode }}"})
    assert render_step(t, 0, ctx(t))["text"]["content"] == (
        "ZHANGWEI 瑞幸咖... 瑞幸咖啡 沪0231 25.8\n周二特惠\n"  # {% if %} lines leave no blank lines
        "https://m.example.com/?s=%E7%91%9E%E5%B9%B8%E5%92%96%E5%95%A1%28%E5%8D%97%E4%BA%AC%E8%A5%BF%E8%B7%AF%E5%BA%97%29")
    no_owner = ctx(t, group={**GROUP, "owner": None})
    assert "店长" in render_step(t, 0, no_owner)["text"]["content"]


# --------------------------------------------------------------------------------------------
# Payload shapes (wecom-reference §3.7)


def test_payload_has_the_exact_add_msg_template_shapes():
    t = make({
        "at": "08:00",
        "text": "{{ store.name }}早安",
        "attachments": [
            {"link": {"title": "{{ store.name }}秒杀", "url": "https://m.example.com/s?store={{ store.code }}",
                      "desc": "第二杯半价", "picurl": "https://img.example.com/c.png"}},
            {"miniprogram": {"title": "早餐", "appid": "wx1234567890abcdef",
                             "page": "pages/menu/index.html?store={{ store.code }}", "pic_media_id": "MEDIA1"}},
            {"image": {"media_id": "MEDIA2"}},
            {"image": {"pic_url": "https://img.example.com/{{ store.code }}.jpg"}},
        ],
    })
    assert render_step(t, 0, ctx(t)) == {
        "text": {"content": "瑞幸咖啡(南京西路店)早安"},
        "attachments": [
            {"msgtype": "link", "link": {"title": "瑞幸咖啡(南京西路店)秒杀", "picurl": "https://img.example.com/c.png",
                                         "desc": "第二杯半价", "url": "https://m.example.com/s?store=SH0231"}},
            {"msgtype": "miniprogram", "miniprogram": {"title": "早餐", "pic_media_id": "MEDIA1",
                                                       "appid": "wx1234567890abcdef",
                                                       "page": "pages/menu/index.html?store=SH0231"}},
            {"msgtype": "image", "image": {"media_id": "MEDIA2"}},
            {"msgtype": "image", "image": {"pic_url": "https://img.example.com/SH0231.jpg"}},
        ],
    }


def test_step_without_text_has_no_text_key_and_empty_optional_fields_are_left_out():
    t = make({"at": "08:00", "attachments": [{"link": {"title": "配方", "url": "https://m.example.com/r"}}]})
    assert render_step(t, 0, ctx(t)) == {
        "attachments": [{"msgtype": "link", "link": {"title": "配方", "url": "https://m.example.com/r"}}]}


def test_text_that_renders_empty_is_left_out_but_a_post_with_nothing_is_an_error():
    with_card = make({"at": "08:00", "text": "{% if store.name %}{{ store.name }}{% endif %}",
                      "attachments": [{"image": {"media_id": "M"}}]})
    assert "text" not in render_step(with_card, 0, ctx(with_card, store=None))
    bare = make({"at": "08:00", "text": "{% if store.name %}{{ store.name }}{% endif %}"})
    with pytest.raises(TemplateRenderError, match="nothing to send"):
        render_step(bare, 0, ctx(bare, store=None))


def test_link_urls_are_rendered_not_rewritten_and_must_stay_http():
    t = make({"at": "08:00",
              "attachments": [{"link": {"title": "t", "url": "https://m.example.com/?s={{ store.code }}"}}]})
    assert render_step(t, 0, ctx(t))["attachments"][0]["link"]["url"] == "https://m.example.com/?s=SH0231"
    # A store name with a space breaks the URL unless it is encoded; the error says how to fix it.
    bad = make({"at": "08:00",
                "attachments": [{"link": {"title": "t", "url": "https://m.example.com/?n={{ store.name }}"}}]})
    spaced = ctx(bad, store={**STORE, "name": "Luckin Coffee"})
    with pytest.raises(TemplateRenderError, match=r"steps\[0\]\.attachments\[0\]\.link\.url.*not an http.*urlencode"):
        render_step(bad, 0, spaced)


# --------------------------------------------------------------------------------------------
# Limits, checked on the rendered values


def test_text_over_4000_bytes_after_rendering_names_the_field():
    # 1,330 Chinese characters are 3,990 bytes: fine as written, too long once the store name is in.
    t = make({"at": "08:00", "text": "好" * 1330 + "{{ store.name }}"})
    with pytest.raises(TemplateRenderError) as err:
        render_step(t, 0, ctx(t))
    assert str(err.value).startswith("steps[0].text: ")
    assert "WeCom allows at most 4,000 bytes" in str(err.value)
    assert render_step(t, 0, ctx(t, store=None))["text"]["content"] == "好" * 1330  # 3,990 bytes is fine


@pytest.mark.parametrize("card, field, limit", [
    ({"link": {"title": "秒杀{{ store.name }}" * 4, "url": "https://m.example.com"}}, "link.title", "128"),
    ({"link": {"title": "t", "url": "https://m.example.com", "desc": "{{ store.address }}" * 15}}, "link.desc", "512"),
    ({"miniprogram": {"title": "{{ store.name }}{{ store.name }}早餐套餐", "appid": "wx1234567890abcdef",
                      "page": "pages/a.html"}}, "miniprogram.title", "64"),
])
def test_card_byte_limits_after_rendering_name_the_field(card, field, limit):
    t = make({"at": "08:00", "attachments": [card]})
    with pytest.raises(TemplateRenderError) as err:
        render_step(t, 0, ctx(t))
    assert str(err.value).startswith(f"steps[0].attachments[0].{field}: ")
    assert f"at most {limit} bytes" in str(err.value)


def test_sample_context_is_long_enough_to_catch_limits_and_uses_template_targets():
    t = make({"at": "10:30", "text": "x"}, targets={"stores": ["HZ0007"], "cities": ["杭州"]},
             days={"weekdays": ["sat"]})
    c = sample_context(t)
    assert len(c["store"]["name"].encode()) > 40 and len(c["store"]["address"]) > 25
    assert (c["store"]["code"], c["store"]["city"], c["weekday"], c["time"]) == ("HZ0007", "杭州", "周六", "10:30")


# --------------------------------------------------------------------------------------------
# Hostile templates

HOSTILE = [
    ("{{ ''.__class__.__mro__ }}", "not allowed"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed"),
    ("{{ lipsum.__globals__ }}", "'lipsum' is not available"),
    ("{{ cycler.__init__.__globals__ }}", "'cycler' is not available"),
    ("{{ self.__init__ }}", "'self' is not available"),
    ("{{ self._TemplateReference__context }}", "'self' is not available"),
    ("{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}", "loops are not available"),
    ("{{ 'a' * 100000000 }}", "'*' only works on numbers"),
    ("{{ store.name * 100000000 }}", "'*' only works on numbers"),
    ("{{ range(10**9)|list }}", "'range' is not available"),
    ("{{ '%099999999d' % 1 }}", "'%' only works on numbers"),
    ("{{ 9 ** 9 ** 9 }}", "too large a number"),
    ("{{ store.name.ljust(100000000) }}", "calling functions or methods is not allowed"),
    ("{{ store.items }}", "store has no field 'items'"),
    ("{{ store.get('name') }}", "calling functions or methods is not allowed"),
    ("{{ store['__class__'] }}", "'__class__' is not allowed"),
    ("{{ '{0.__class__}'.format(1) }}", "calling functions or methods is not allowed"),
    ("{% set s = 'aaaaaaaa' %}{% set s = s ~ s %}{{ s }}", "{% set %} is not available"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "macros are not available"),
    ("{% include '/etc/passwd' %}", "cannot include"),
    ("{{ 'x'|replace('', 'yyyyyyyyyyyy')|replace('', 'yyyyyyyyyyyy')|replace('', 'yyyyyyyyyyyy')"
     "|replace('', 'yyyyyyyyyyyy')|replace('', 'yyyyyyyyyyyy') }}",
     "more than 16,000 characters"),
    ("{{ store.name|attr('__class__') }}", "unknown filter 'attr'"),
    ("{{ store }}", "is a group of fields"),
    ("{{ stroe.name }}", "unknown variable 'stroe' (did you mean 'store'?)"),
    ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "nested too deeply"),
    ("x" * 8001, "at most 8,000"),
]


@pytest.mark.parametrize("source, reason", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_templates_are_refused_at_render_with_a_clear_message(source, reason):
    t = make({"at": "08:00", "text": source})
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as err:
        render_step(t, 0, ctx(t))
    assert time.monotonic() - started < 2, "refused, but only after doing the work"
    assert reason in str(err.value)
    assert str(err.value).startswith("steps[0].text: ")
    for leak in ("<class", "object at 0x", "built-in", "<function", "TemplateReference", "<module"):
        assert leak not in err.value.reason


# Expressions that might leak something if any check were missing: each must either be refused or
# render to text without a Python repr in it.
PROBES = [
    "{{ store.name.upper }}", "{{ store.keys }}", "{{ group.__dict__ }}", "{{ store.name|length }}",
    "{{ store.code is defined }}", "{{ store.nope is defined }}", "{{ (store or group).values }}",
    "{{ [store] }}", "{{ (store, group) }}", "{{ store.name[0] }}", "{{ store.name[:2] ~ group.name }}",
    "{{ date|int }}", "{{ template }}", "{{ 1 if store else 2 }}", "{{ store.name|default(store) }}",
    "{{ weekday|truncate(1, true, '') }}", "{{ time|replace(':', '点') }}",
]


@pytest.mark.parametrize("source", PROBES)
def test_rendering_never_returns_python_internals(source):
    try:
        out = render_field(source, ctx(make({"at": "08:00", "text": "x"})))
    except TemplateRenderError as exc:
        out = exc.reason
    for leak in ("<", "object at", "built-in", "{'", "dict_keys", "dict_values", "dict_items"):
        assert leak not in out, out


def test_numbers_still_work_but_stay_small():
    rendered = render_field("{{ 2 ** 10 }} {{ (19.9 * 2)|round(1) }} {{ 7 % 3 }} {{ 10 ** 9 }}", {})
    assert rendered == "1024 39.8 1 1000000000"
    with pytest.raises(TemplateRenderError, match="too large"):
        render_field("{{ 10 ** 100 }}", {})

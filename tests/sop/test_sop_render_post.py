"""A post planned before its group lost its store is never sent with blanks for the store."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from scrm.sop.sender import RenderProblemKind, render_post
from scrm.sop.template import SopTemplate

TEMPLATE = SopTemplate.model_validate({
    "id": "breakfast", "name": "早餐",
    "steps": [{"at": "08:00", "text": "{{ store.name }}的早餐已经备好啦～"}],
})
PLAIN = SopTemplate.model_validate({"id": "hello", "name": "问候", "steps": [{"at": "09:00", "text": "早上好"}]})


def post(template_id):
    return SimpleNamespace(template_id=template_id, step_key="1", day=dt.date(2026, 11, 30))


GROUP = SimpleNamespace(chat_id="wr1", name="福利群", owner_userid="zhangsan", status="active")
STORE = SimpleNamespace(code="BJ001", name="三里屯店", address="北京市朝阳区", city="北京")


def test_a_store_template_for_a_group_without_a_store_is_refused_not_rendered_blank():
    templates = {"breakfast": TEMPLATE, "hello": PLAIN}
    content, error = render_post(post("breakfast"), templates, GROUP, None)
    assert content is None and error is not None and error.kind == RenderProblemKind.no_store
    assert str(error) == "the group has no store; the template prints store fields"  # the ledger's error column
    content, error = render_post(post("breakfast"), templates, GROUP, STORE)
    assert error is None and content["text"]["content"] == "三里屯店的早餐已经备好啦～"
    # A template without store fields still goes to a group without a store.
    content, error = render_post(post("hello"), templates, GROUP, None)
    assert error is None and content["text"]["content"] == "早上好"

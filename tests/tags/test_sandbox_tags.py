"""The sandbox's tag library behaves like WeCom where the tag sync depends on it (reference §2.3,
§3.3): names are unique in a group on rename too (40071), and an admin's console edits and deletes
post change_external_tag callbacks (a group's deletion one event, none per tag)."""

from __future__ import annotations

import pytest

from scrm.sandbox import Sandbox, SandboxError
from scrm.wecom.events import TagEvent, parse_event


@pytest.fixture
def sandbox(clock):
    sb = Sandbox("wwtags", "s", clock=clock)
    sb.hold_callbacks()  # keep what would be posted, without a receiver
    return sb


def call(sb: Sandbox, path: str, body: dict) -> dict:
    token = sb.handle("GET", "gettoken", {"corpid": sb.corp_id, "corpsecret": sb.secret}, None)["access_token"]
    return sb.handle("POST", path, {"access_token": token}, body)


def events(sb: Sandbox) -> list[TagEvent]:
    out = [parse_event(d.plaintext) for d in sb.callbacks]
    assert all(isinstance(e, TagEvent) for e in out)
    return out  # type: ignore[return-value]


def test_a_rename_to_a_name_the_group_already_has_is_refused_with_40071(sandbox):
    """Mutation tried: api_edit_corp_tag without check_tag_rename (two tags named 新客: fails)."""
    a = sandbox.admin_create_tag("新客", group_name="scrm自动标签")
    b = sandbox.admin_create_tag("首购", group_id=a["group_id"])
    other = sandbox.admin_create_tag("首购", group_name="手工")  # the same name in another group is fine
    assert call(sandbox, "externalcontact/edit_corp_tag", {"id": b["tag_id"], "name": "新客"})["errcode"] == 40071
    assert call(sandbox, "externalcontact/edit_corp_tag", {"id": other["tag_id"], "name": "新客"})["errcode"] == 0
    assert call(sandbox, "externalcontact/edit_corp_tag", {"id": a["group_id"], "name": "手工"})["errcode"] == 40071
    assert call(sandbox, "externalcontact/edit_corp_tag", {"id": b["tag_id"], "name": "x" * 31})["errcode"] == 40058
    assert call(sandbox, "externalcontact/edit_corp_tag", {"id": "etnone", "name": "y"})["errcode"] == 40068
    before = len(sandbox.callbacks)
    with pytest.raises(SandboxError) as exc:
        sandbox.admin_edit_tag(b["tag_id"], name="新客")
    assert exc.value.errcode == 40071 and len(sandbox.callbacks) == before  # refused: no event
    assert sandbox.tags[b["tag_id"]].name == "首购"


def test_admin_edits_and_deletes_post_tag_events_like_wecom(sandbox):
    a = sandbox.admin_create_tag("新客", group_name="scrm自动标签")
    b = sandbox.admin_create_tag("首购", group_id=a["group_id"])
    sandbox.admin_edit_tag(a["tag_id"], name="新朋友")
    sandbox.admin_delete_tag(b["tag_id"])
    sandbox.admin_delete_tag(a["group_id"])
    got = [(e.change_type, e.id, e.tag_type) for e in events(sandbox)]
    assert got == [("create", a["group_id"], "tag_group"), ("create", b["tag_id"], "tag"),
                   ("update", a["tag_id"], "tag"), ("delete", b["tag_id"], "tag"),
                   ("delete", a["group_id"], "tag_group")]
    assert not sandbox.tags and not sandbox.tag_groups

"""Callback crypto against WeCom's official vectors (reference §1.8) and every sample event (§2)."""

from __future__ import annotations

import pytest

from scrm.wecom.crypto import (
    CallbackCrypto,
    CorpMismatch,
    DecryptError,
    MalformedCallback,
    SignatureError,
)
from scrm.wecom.events import ChatEvent, ContactEvent, TagEvent, UnknownEvent, dedup_key, parse_event, render_event

OFFICIAL = CallbackCrypto("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
ECHO = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3"
    "TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5g"
    "sijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQ"
    "Uax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyP"
    "IGHBZZIs2pDBS8R07+qN+E7Q=="
)
BODY = f"<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[{ENCRYPT}]]></Encrypt></xml>"


def test_official_url_verification_vector():
    assert OFFICIAL.verify_url("5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780", ECHO) == (
        "1616140317555161061"
    )


def test_official_post_decrypt_vector():
    plain = OFFICIAL.open_envelope(BODY, "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149")
    assert "<Content><![CDATA[hello]]></Content>" in plain and "<MsgId>4561255354251345929</MsgId>" in plain


def test_forged_signature_is_refused_before_decrypting():
    with pytest.raises(SignatureError):
        OFFICIAL.open_envelope(BODY, "0" * 40, "1409659813", "1372623149")
    with pytest.raises(SignatureError):  # a replay with another timestamp no longer matches
        OFFICIAL.open_envelope(BODY, "477715d11cdb4164915debcba66cb864d751f3e6", "1409659814", "1372623149")


def test_message_for_another_corp_is_refused():
    other = CallbackCrypto("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wwSomeoneElse")
    with pytest.raises(CorpMismatch):
        other.open_envelope(BODY, "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149")


@pytest.mark.parametrize(
    "body",
    [b"not xml at all", b"<xml><ToUserName>x</ToUserName></xml>",
     b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>'],
)
def test_malformed_envelopes_are_refused(body):
    with pytest.raises(MalformedCallback):
        OFFICIAL.open_envelope(body, "x", "1", "1")


def test_garbage_ciphertext_with_valid_signature_is_a_decrypt_error():
    c = CallbackCrypto("tok", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "ww1")
    params, _ = c.seal("<xml/>")
    from scrm.wecom.crypto import signature

    bogus = "QUJDREVGR0hJSktMTU5PUA=="  # 16 bytes that decrypt to junk padding
    with pytest.raises(DecryptError):
        c.open_envelope(f"<xml><Encrypt>{bogus}</Encrypt></xml>", signature("tok", "1", "2", bogus), "1", "2")


def test_seal_round_trip_uses_fresh_randomness_but_same_plaintext_key():
    c = CallbackCrypto("tok", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "ww1")
    plain = render_event("ww1", "change_external_tag", "create", 1, Id="et1", TagType="tag")
    (p1, b1), (p2, b2) = c.seal(plain), c.seal(plain)
    assert b1 != b2
    assert dedup_key(c.open_envelope(b1, **p1)) == dedup_key(c.open_envelope(b2, **p2))


HEAD = ("<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
        "<CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]></MsgType>")

SAMPLES = {
    "add_external_contact": HEAD + "<Event><![CDATA[change_external_contact]]></Event>"
    "<ChangeType><![CDATA[add_external_contact]]></ChangeType>"
    "<UserID><![CDATA[zhangsan]]></UserID><ExternalUserID><![CDATA[woAJ2GCAAAXtWyujaWJHDDGi0mAAAA]]></ExternalUserID>"
    "<State><![CDATA[teststate]]></State><WelcomeCode><![CDATA[WELCOMECODE]]></WelcomeCode></xml>",
    "del_external_contact": HEAD + "<Event><![CDATA[change_external_contact]]></Event>"
    "<ChangeType><![CDATA[del_external_contact]]></ChangeType>"
    "<UserID><![CDATA[zhangsan]]></UserID><ExternalUserID><![CDATA[woAJ2GCAAAXtWyujaWJHDDGi0mACAAAA]]></ExternalUserID>"
    "<Source><![CDATA[DELETE_BY_TRANSFER]]></Source></xml>",
    "transfer_fail": HEAD + "<Event><![CDATA[change_external_contact]]></Event>"
    "<ChangeType><![CDATA[transfer_fail]]></ChangeType>"
    "<FailReason><![CDATA[customer_refused]]></FailReason><UserID><![CDATA[zhangsan]]></UserID>"
    "<ExternalUserID><![CDATA[woAJ2GCAAAXtWyujaWJHDDGi0mAAAA]]></ExternalUserID></xml>",
    "chat_update": "<xml><ToUserName><![CDATA[ww55ca070cb9b7eb22]]></ToUserName>"
    "<FromUserName><![CDATA[sys]]></FromUserName>"
    "<CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_chat]]></Event>"
    "<ChatId><![CDATA[wrx7HUARsKwGRaQBVKPBTcEyzdHA4HrQ]]></ChatId><ChangeType><![CDATA[update]]></ChangeType>"
    "<UpdateDetail><![CDATA[add_member]]></UpdateDetail><JoinScene>1</JoinScene><QuitScene>0</QuitScene>"
    "<MemChangeCnt>10</MemChangeCnt><MemChangeList><Item>Jack</Item><Item>Rose</Item></MemChangeList>"
    "<LastMemVer>9c3f97c2ada667dfb5f6d03308d963e1</LastMemVer><CurMemVer>71217227bbd112ecfe3a49c482195cb4</CurMemVer></xml>",
    "chat_csv": HEAD + "<Event><![CDATA[change_external_chat]]></Event><ChatId><![CDATA[wr1]]></ChatId>"
    "<ChangeType><![CDATA[update]]></ChangeType><UpdateDetail><![CDATA[del_member]]></UpdateDetail>"
    "<MemChangeList><![CDATA[id1,id2]]></MemChangeList></xml>",
    "chat_dismiss": HEAD + "<Event><![CDATA[change_external_chat]]></Event><ChatId><![CDATA[CHAT_ID]]></ChatId>"
    "<ChangeType><![CDATA[dismiss]]></ChangeType></xml>",
    "tag_create": "<xml><ToUserName><![CDATA[CORPID]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
    "<CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_tag]]></Event>"
    "<Id><![CDATA[TAG_ID]]></Id><TagType><![CDATA[tag]]></TagType><ChangeType><![CDATA[create]]></ChangeType></xml>",
    "tag_shuffle": HEAD + "<Event><![CDATA[change_external_tag]]></Event><Id><![CDATA[]]></Id>"
    "<StrategyId><![CDATA[STRATEGY_ID]]></StrategyId><ChangeType><![CDATA[shuffle]]></ChangeType></xml>",
}


def test_contact_event_samples_parse_to_typed_events():
    add = parse_event(SAMPLES["add_external_contact"])
    assert isinstance(add, ContactEvent) and add.known
    assert (add.user_id, add.external_user_id, add.state, add.welcome_code) == (
        "zhangsan", "woAJ2GCAAAXtWyujaWJHDDGi0mAAAA", "teststate", "WELCOMECODE")
    assert add.create_time == 1403610513
    deleted = parse_event(SAMPLES["del_external_contact"])
    assert deleted.change_type == "del_external_contact" and deleted.source == "DELETE_BY_TRANSFER"
    assert deleted.welcome_code is None
    failed = parse_event(SAMPLES["transfer_fail"])
    assert failed.fail_reason == "customer_refused"


@pytest.mark.parametrize("change", ["add_external_contact", "edit_external_contact", "add_half_external_contact",
                                    "del_external_contact", "del_follow_user", "transfer_fail", "msg_audit_approved"])
def test_every_contact_change_type_is_known(change):
    ev = parse_event(render_event("ww1", "change_external_contact", change, 1, UserID="u", ExternalUserID="wm1"))
    assert isinstance(ev, ContactEvent) and ev.known and ev.change_type == change


def test_chat_event_samples_parse_member_lists_in_both_forms():
    upd = parse_event(SAMPLES["chat_update"])
    assert isinstance(upd, ChatEvent)
    assert (upd.update_detail, upd.join_scene, upd.quit_scene, upd.mem_change_cnt) == ("add_member", 1, 0, 10)
    assert upd.mem_change_list == ("Jack", "Rose")
    assert upd.last_mem_ver == "9c3f97c2ada667dfb5f6d03308d963e1"
    assert upd.cur_mem_ver == "71217227bbd112ecfe3a49c482195cb4"
    single = parse_event(render_event("ww1", "change_external_chat", "update", 1, ChatId="wr", MemChangeList=["only"]))
    assert single.mem_change_list == ("only",)
    assert parse_event(SAMPLES["chat_csv"]).mem_change_list == ("id1", "id2")
    dismiss = parse_event(SAMPLES["chat_dismiss"])
    assert dismiss.change_type == "dismiss" and dismiss.chat_id == "CHAT_ID" and dismiss.known


def test_tag_event_samples():
    tag = parse_event(SAMPLES["tag_create"])
    assert isinstance(tag, TagEvent) and (tag.id, tag.tag_type, tag.change_type) == ("TAG_ID", "tag", "create")
    shuffle = parse_event(SAMPLES["tag_shuffle"])
    assert shuffle.change_type == "shuffle" and shuffle.id == "" and shuffle.strategy_id == "STRATEGY_ID"


def test_unknown_events_and_codes_are_kept_not_crashed():
    ev = parse_event(HEAD + "<Event><![CDATA[msgaudit_notify]]></Event></xml>")
    assert isinstance(ev, UnknownEvent) and ev.fields["Event"] == "msgaudit_notify"
    new = parse_event(render_event("ww1", "change_external_contact", "brand_new_change", 1, UserID="u"))
    assert isinstance(new, ContactEvent) and not new.known


@pytest.mark.parametrize("bad", ["<xml><CreateTime>abc</CreateTime></xml>", "<notxml/>", "<xml><a></xml>"])
def test_malformed_plaintext_is_refused(bad):
    with pytest.raises(MalformedCallback):
        parse_event(bad)

"""Rendering a journey's message with scrm.sop.render, with ``customer`` fields.

A journey goes to one customer, so its text reads ``{{ customer.name }}`` where a group post reads
``{{ group.name }}``. The SOP renderer (its sandbox, whitelist, size caps and WeCom byte limits)
is used as it is: a journey field is re-spelt token by token with Jinja's own lexer, ``customer``
becoming the renderer's ``group`` variable (the chat the message goes to), and the renderer's
messages are spelt back. ``group`` itself is refused in a journey: there is no group.

Customer fields: ``customer.name`` (their WeCom name), ``customer.owner`` (the owner's name, the
employee who sends it), ``customer.chat_id`` (their external_userid); ``store.*`` is their home
store (empty when they have none); ``date``, ``weekday``, ``time``, ``template.name`` as in SOPs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Any

from jinja2.exceptions import TemplateSyntaxError

from scrm.journeys.template import Journey
from scrm.sop.render import (
    ENV,
    SAMPLE_STORE,
    TEMPLATE_FIELDS,
    Loc,
    TemplateRenderError,
    build_context,
    check_step_sources,
    render_step,
)
from scrm.sop.template import SopTemplate, Step
from scrm.wecom.messages import PostContent

ALIAS, SOP_NAME = "customer", "group"
SAMPLE_CUSTOMER = {"chat_id": "wmOgQhDgAAd8Vm2bSg7SxnVAF1ybgAAA", "name": "一杯热拿铁不加糖的小王同学",
                   "owner": "瑞幸咖啡南京西路店·张伟"}
SAMPLE_DAY = dt.date(2025, 1, 6)
_GROUP_WORD = re.compile(r"\bgroup\b")


class GroupInJourney(TemplateRenderError):
    """``group`` read in a journey field."""


def _aliased(source: str) -> tuple[str, int | None]:
    """``source`` with the variable ``customer`` spelt ``group``; and the line of a ``group``
    the operator wrote (refused), or None. A source that does not lex is returned unchanged:
    the renderer reports its syntax error."""
    try:
        tokens = list(ENV.lex(source))
    except TemplateSyntaxError:
        return source, None
    out: list[str] = []
    group_line = None
    previous = ""
    for line, kind, value in tokens:
        if kind == "name" and previous != ".":
            if value == SOP_NAME and group_line is None:
                group_line = line
            elif value == ALIAS:
                value = SOP_NAME
        out.append(value)
        if kind != "whitespace":
            previous = value
    return "".join(out), group_line


def _spelt_back(exc: TemplateRenderError, loc: Loc) -> TemplateRenderError:
    return TemplateRenderError(_GROUP_WORD.sub(ALIAS, exc.reason), loc=loc, lineno=exc.lineno)


def _journey_loc(loc: Loc) -> Loc:
    """``("steps", 0, "attachments", 1, ...)`` -> ``("attachments", 1, ...)``: where the field is in the journey."""
    return tuple(loc[2:]) if loc[:2] == ("steps", 0) else tuple(loc)


def _message_fields(raw: Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    if isinstance(raw.get("text"), str) and raw["text"]:
        yield ("text",), raw["text"]
    attachments = raw.get("attachments")
    for j, att in enumerate(attachments if isinstance(attachments, list) else []):
        for kind, keys in TEMPLATE_FIELDS.items():
            card = att.get(kind) if isinstance(att, Mapping) else None
            if isinstance(card, Mapping):
                for key in keys:
                    if isinstance(card.get(key), str) and card[key]:
                        yield ("attachments", j, kind, key), card[key]


def _aliased_raw(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[TemplateRenderError]]:
    """The message part of a journey (validated or raw mapping) with every template field aliased,
    and a problem for every ``group`` written in one."""
    out: dict[str, Any] = {"text": raw.get("text") if isinstance(raw.get("text"), str) else "",
                           "attachments": []}
    attachments = raw.get("attachments")
    out["attachments"] = [dict(a) if isinstance(a, Mapping) else a
                          for a in (attachments if isinstance(attachments, list) else [])]
    for att in out["attachments"]:
        if isinstance(att, dict):
            for kind in TEMPLATE_FIELDS:
                if isinstance(att.get(kind), Mapping):
                    att[kind] = dict(att[kind])
    problems: list[TemplateRenderError] = []
    for loc, source in _message_fields(raw):
        aliased, group_line = _aliased(source)
        if group_line is not None:
            problems.append(GroupInJourney(
                "'group' is not available in a journey (it goes to one customer); use customer.name, "
                "customer.owner, store.name", loc=loc, lineno=group_line))
        if loc == ("text",):
            out["text"] = aliased
        else:
            out["attachments"][int(loc[1])][str(loc[2])][str(loc[3])] = aliased
    return out, problems


def journey_template(journey: Journey) -> SopTemplate:
    """The journey as the one-step SOP template the renderer takes (fields aliased)."""
    message, problems = _aliased_raw(journey.model_dump())
    if problems:
        raise problems[0]
    step = Step.model_validate({"id": "message", "at": journey.at, "channel": journey.channel.value,
                                "priority": journey.priority, **message})
    return SopTemplate(id=journey.id, name=journey.name, priority=journey.priority, steps=[step])


def check_sources(raw: Mapping[str, Any]) -> list[TemplateRenderError]:
    """Every problem of every template field of a journey (validated, dumped, or raw YAML data),
    each located at its journey field and line inside it."""
    message, problems = _aliased_raw(raw)
    found = [*problems]
    for exc in check_step_sources(message, 0):
        found.append(_spelt_back(exc, _journey_loc(exc.loc)))
    return found


def customer_context(journey: Journey, *, external_userid: str, customer_name: str, owner_name: str,
                     store: Mapping[str, Any] | None, day: dt.date) -> dict[str, Any]:
    """What a journey message renders with (plain dicts of strings, as for SOP posts)."""
    return build_context(group={"chat_id": external_userid, "name": customer_name, "owner": owner_name},
                         store=store, day=day, at=journey.at, template=journey_template(journey))


def sample_context(journey: Journey) -> dict[str, Any]:
    """Long, realistic values for lint, so a message over WeCom's limits fails in CI."""
    return customer_context(journey, external_userid=SAMPLE_CUSTOMER["chat_id"],
                            customer_name=SAMPLE_CUSTOMER["name"], owner_name=SAMPLE_CUSTOMER["owner"],
                            store=SAMPLE_STORE, day=SAMPLE_DAY)


def render_journey(journey: Journey, context: Mapping[str, Any]) -> PostContent:
    """The WeCom payload of the journey's message for one customer. Raises TemplateRenderError
    located at the journey's field (``attachments[0].link.title``), in the journey's words."""
    template = journey_template(journey)
    try:
        return render_step(template, 0, context)
    except TemplateRenderError as exc:
        raise _spelt_back(exc, _journey_loc(exc.loc)) from None

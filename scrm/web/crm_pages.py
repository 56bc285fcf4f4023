"""The sales reps' and managers' CRM pages (Chinese, phone first, no CDN): 我的客户 (/crm), a
customer's page with their merged timeline and follow-up records (/crm/customers/{id}, with the
rep's edit form), and the managers' 服务质量 (/crm/quality, its CSV).

Thin: the scope and the figures come from :mod:`scrm.crm.queries` and :mod:`scrm.crm.service`;
this module parses the request, asks them and renders. A rep sees only the customers they follow;
another rep's customer is a 403 (page, edit and CSV alike), logged with the userid; a manager sees
everyone's; anyone else gets a Chinese 403 page; nobody signed in is sent to ``/login?next=…``.
Everything from data is autoescaped; a risky phrase is highlighted by escaping the text first and
wrapping the escaped phrase in ``<mark>``."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from scrm.auth.roles import ROLE_NAMES, Forbidden, Principal
from scrm.crm import queries, service
from scrm.crm.quality import QualityRow
from scrm.db import utcnow
from scrm.layers.queries import LayerNames, RuleNames
from scrm.logs import get_logger
from scrm.web.auth_routes import CSRF_FIELD, CSRF_HEADER, CSRF_REFUSED
from scrm.web.charts import hbar_chart
from scrm.web.dashboard import csv_bytes, csv_safe
from scrm.web.lookups import local_time
from scrm.web.templating import templates

log = get_logger(__name__)

RECORDS_PER_PAGE = 20
DEFAULT_DAYS = 7
MAX_DAYS = 366
MAX_NOTE = service.NOTE_MAX
MAX_NEXT_STEP = service.TEXT_MAX["next_step"]
MAX_QUESTIONS = service.OPEN_QUESTIONS_MAX
MAX_QUESTION = service.OPEN_QUESTION_TEXT_MAX
# A full edit form in Chinese (9 bytes a character url-encoded) is far above the sign-in's 16 KB cap.
MAX_FORM_BYTES = 9 * (MAX_NOTE + MAX_NEXT_STEP + MAX_QUESTIONS * (MAX_QUESTION + 2)) + 4096
DASH = "—"

CHANNELS = {"chat": "聊天", "call": "电话", "sms": "短信"}  # shown as coloured labels (no icon font needed)
MSGTYPES = {"image": "[图片]", "voice": "[语音]", "video": "[视频]", "file": "[文件]", "link": "[链接]",
            "weapp": "[小程序]", "emotion": "[表情]", "location": "[位置]", "card": "[名片]",
            "mixed": "[图文消息]", "meeting_voice_call": "[语音通话]", "voip_doc_share": "[文档]",
            "chatrecord": "[聊天记录]", "todo": "[待办]", "vote": "[投票]", "collect": "[填表]",
            "redpacket": "[红包]", "calendar": "[日程]", "markdown": "[消息]", "news": "[图文]"}
CALL_STATUS = {"answered": "已接通", "connected": "已接通", "missed": "未接通", "no_answer": "无人接听",
               "noanswer": "无人接听", "busy": "忙线", "rejected": "被拒接", "failed": "呼叫失败",
               "cancelled": "已取消", "canceled": "已取消", "voicemail": "语音信箱"}
SMS_STATUS = {"delivered": "已送达", "sent": "已发送", "failed": "发送失败", "received": "已接收"}
FIELD_NAMES = {"next_step": "下一步", "open_questions": "待回答的问题", "first_question": "客户的问题",
               "last_reply": "最后回复"}


# --- formatting -----------------------------------------------------------------------------------


def duration_text(seconds: int | None) -> str:
    """A call's length: 45秒, 3分12秒, 1小时2分."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}秒"
    if seconds < 3600:
        return f"{seconds // 60}分{seconds % 60}秒" if seconds % 60 else f"{seconds // 60}分钟"
    return f"{seconds // 3600}小时{seconds % 3600 // 60}分"


def minutes(seconds: float | None) -> str:
    """Business seconds as minutes for the quality table: 90 → 1.5 分钟; None → —."""
    return DASH if seconds is None else f"{seconds / 60:.1f} 分钟"


def minutes_cell(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def message_text(item: queries.TimelineItem) -> str:
    """What a person reads for a message: its text, a label for a non-text chat message."""
    if item.revoked:
        return "该消息已撤回"
    if item.content:
        return item.content
    if item.channel == "call":
        return ""
    return MSGTYPES.get(item.msgtype, f"[{item.msgtype}]" if item.msgtype else "")


def call_status(item: queries.TimelineItem) -> str:
    raw = str(item.payload.get("status") or "").strip()
    if not raw:
        return ""
    table = CALL_STATUS if item.channel == "call" else SMS_STATUS
    return table.get(raw.lower(), raw)


def highlight(text: str, phrase: str) -> Markup:
    """``text`` escaped, every occurrence of ``phrase`` wrapped in <mark> (escaping first, so
    neither the text nor the phrase can inject markup)."""
    if not phrase or phrase not in text:
        return Markup(escape(text))
    parts = text.split(phrase)
    marked = Markup("<mark>") + escape(phrase) + Markup("</mark>")
    return marked.join(escape(p) for p in parts)


def who_label(item: queries.TimelineItem, customer: str) -> str:
    if item.direction == "in":
        return item.who or customer or "客户"
    return item.who or "我方"


# --- the router -----------------------------------------------------------------------------------


class _SignIn(Exception):
    pass


class _BadInput(ValueError):
    """A request the page cannot read; the message is Chinese."""


def _date(value: str | None, what: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value.strip()[:20])
    except ValueError:
        raise _BadInput(f"{what}「{value[:20]}」不是有效日期，请用 YYYY-MM-DD 格式") from None


def _page(value: str | None, what: str = "页码") -> int:
    if not value:
        return 1
    try:
        n = int(value)
    except ValueError:
        raise _BadInput(f"{what}必须是正整数") from None
    if not 1 <= n <= 1_000_000:
        raise _BadInput(f"{what}必须是正整数")
    return n


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each); {} for another body. Too long: _BadInput."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise _BadInput("提交的内容太长了，请删减备注或问题后再保存")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise _BadInput("提交的内容无法读取，请刷新页面后重试") from None
    return {k: v[0] for k, v in parsed.items()}


def _questions(text: str, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The open questions from the form (one a line): a line that is an existing question keeps
    its link to the message it was asked in."""
    known = {str(q.get("text", "")).strip(): q for q in before}
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_QUESTION:
            raise _BadInput(f"每个问题最多 {MAX_QUESTION} 个字")
        out.append(dict(known[line]) if line in known else {"text": line, "message_id": None, "asked_at": None})
    if len(out) > MAX_QUESTIONS:
        raise _BadInput(f"待回答的问题最多 {MAX_QUESTIONS} 个")
    return out


def crm_router(engine, principal: Callable[[Request], Principal | None], *, tz: dt.tzinfo,
               csrf: Callable[[Request], str], crm_settings: Any,
               layer_names: Callable[[], LayerNames] | None = None,
               today: Callable[[], dt.date] | None = None,
               clock: Callable[[], dt.datetime] | None = None) -> APIRouter:
    """/crm (my customers), /crm/customers/{external_userid} (timeline, records, edit form; POST
    …/records/{id} saves an edit), /crm/quality and /crm/quality.csv (managers). ``principal``:
    who is signed in (``current_principal``); ``csrf``: the sign-in's form token
    (``csrf_token``); ``layer_names``: layer ids → Chinese names (default: the layer rule files);
    ``today``/``clock``: the local date / UTC now (tests)."""
    router = APIRouter(include_in_schema=False)
    names_of = layer_names or RuleNames()

    def local_today() -> dt.date:
        return today() if today is not None else dt.datetime.now(tz).date()

    def now() -> dt.datetime:
        return clock() if clock is not None else utcnow()

    def signed_in(request: Request) -> Principal:
        p = principal(request)
        if p is None:
            raise _SignIn()
        return p

    def notice(request: Request, status: int, heading: str, message: str) -> Response:
        return templates.TemplateResponse(request, "crm_notice.html", {
            **common(request, principal(request)), "heading": heading, "message": message}, status_code=status)

    def common(request: Request, p: Principal | None) -> dict[str, Any]:
        nav = []
        if p is not None and p.has(*queries.CRM_ROLES):
            nav.append(("/crm", "客户跟进"))
            if queries.is_manager(p):
                nav.append(("/crm/quality", "服务质量"))
        if p is not None and p.may_see_kpis:
            nav.append(("/dashboard", "经营看板"))
        return {"who": p, "nav": nav, "crm_ok": p is not None and p.has(*queries.CRM_ROLES),
                "path": request.url.path, "logout_token": csrf(request) if p else "",
                "role_names": [ROLE_NAMES[r] for r in sorted(p.roles)] if p else [],
                "tz": tz, "local_time": local_time, "channels": CHANNELS, "message_text": message_text,
                "call_status": call_status, "duration_text": duration_text, "minutes": minutes,
                "highlight": highlight, "who_label": who_label, "field_names": FIELD_NAMES}

    def guarded(request: Request, build: Callable[[Principal], Response], **ids: Any) -> Response:
        """Sign-in, role and scope first; refusals as Chinese pages (and logged with the userid)."""
        try:
            return build(signed_in(request))
        except _SignIn:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=302)
        except Forbidden as exc:
            p = principal(request)
            log.warning("crm_forbidden", userid=p.userid if p else None, path=request.url.path,
                        method=request.method, **{k: str(v)[:64] for k, v in ids.items()})
            return notice(request, 403, "没有权限", str(exc))
        except (queries.BadQuery, _BadInput) as exc:
            return notice(request, 400, "请求有误", str(exc))

    # -- 我的客户 --

    @router.get("/crm", response_class=HTMLResponse)
    def customers_page(request: Request):
        def build(p: Principal) -> Response:
            q = request.query_params
            scope = queries.scope_for(p, q.get("rep"))
            search = queries.parse_search(q.get("q"))
            number = _page(q.get("page"))
            listing = queries.customer_list(engine, scope, search=search, page=number)
            params = {k: v for k, v in {"q": search.text, "rep": scope.rep if scope.manager else None}.items() if v}

            def link(**overrides: Any) -> str:
                merged = {**params, **{k: v for k, v in overrides.items() if v is not None}}
                return "/crm" + ("?" + urlencode(merged) if merged else "")

            return templates.TemplateResponse(request, "crm_list.html", {
                **common(request, p), "scope": scope, "search": search, "listing": listing, "link": link,
                "layers": names_of(), "reps": queries.rep_choices(engine) if scope.manager else []})
        return guarded(request, build)

    # -- one customer --

    def customer_view(request: Request, p: Principal, external_userid: str, *, status: int = 200,
                      form_error: dict[int, str] | None = None,
                      form_values: dict[int, dict[str, str]] | None = None) -> Response:
        scope = queries.require_customer(engine, p, external_userid)
        q = request.query_params
        header = queries.customer_header(engine, external_userid)
        number = _page(q.get("page"))
        focus = None
        if q.get("msg"):
            try:
                focus = int(q["msg"])
            except ValueError:
                raise _BadInput("消息编号必须是整数") from None
            found = queries.page_of_message(engine, external_userid, focus)
            if found is not None:
                number = found
        rpage = _page(q.get("rpage"), "记录页码")
        shown_name = header.name or header.external_userid
        tl = queries.timeline(engine, external_userid, page=number, customer_name=shown_name)
        records = service.records_for(engine, external_userid, limit=RECORDS_PER_PAGE + 1,
                                      offset=(rpage - 1) * RECORDS_PER_PAGE)
        more_records = len(records) > RECORDS_PER_PAGE
        records = records[:RECORDS_PER_PAGE]
        names = queries.names_for(engine, [u for r in records for u in (r.record.userid, r.edited_by)])
        shown_ids = {r.record.id for r in records}
        page_errors = [m for rid, m in (form_error or {}).items() if rid not in shown_ids]
        base = f"/crm/customers/{quote(external_userid, safe='')}"

        def link(**overrides: Any) -> str:
            params = {"page": number if number > 1 else None, "rpage": rpage if rpage > 1 else None}
            params.update(overrides)
            kept = {k: v for k, v in params.items() if v is not None}
            return base + ("?" + urlencode(kept) if kept else "")

        def message_link(message_id: int | None) -> str:
            if not message_id:
                return ""
            params = {"msg": message_id, **({"rpage": rpage} if rpage > 1 else {})}
            return f"{base}?{urlencode(params)}#m-{message_id}"

        return templates.TemplateResponse(request, "crm_customer.html", {
            **common(request, p), "scope": scope, "c": header, "shown_name": shown_name, "tl": tl,
            "records": records, "names": names, "more_records": more_records, "rpage": rpage, "link": link,
            "message_link": message_link, "base": base, "focus": focus, "layers": names_of(),
            "saved": q.get("saved"), "page_errors": page_errors, "form_error": form_error or {},
            "form_values": form_values or {},
            "csrf_value": csrf(request)}, status_code=status)

    @router.get("/crm/customers/{external_userid}", response_class=HTMLResponse)
    def customer_page(request: Request, external_userid: str):
        return guarded(request, lambda p: customer_view(request, p, external_userid),
                       external_userid=external_userid)

    @router.post("/crm/customers/{external_userid}/records/{record_id}", response_class=HTMLResponse)
    async def save_record(request: Request, external_userid: str, record_id: int):
        try:
            fields = await _form(request)
        except _BadInput as exc:
            refusal = str(exc)
            fields = {}
        else:
            refusal = ""

        def build(p: Principal) -> Response:
            queries.require_customer(engine, p, external_userid)
            if refusal:  # nothing is read or saved from a body that long
                raise _BadInput(refusal)
            expected = csrf(request)
            got = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
            if not expected or not hmac.compare_digest(expected.encode(), got.encode()):
                log.warning("csrf_refused", path=request.url.path, userid=p.userid, had_token=bool(got))
                return notice(request, 403, "请求已过期", CSRF_REFUSED)
            values = {k: fields.get(k, "") for k in ("note", "next_step", "open_questions")}
            try:
                note = values["note"].strip()
                next_step = values["next_step"].strip()
                if len(note) > MAX_NOTE:
                    raise _BadInput(f"备注最多 {MAX_NOTE} 个字（现在 {len(note)} 个）")
                if len(next_step) > MAX_NEXT_STEP:
                    raise _BadInput(f"下一步最多 {MAX_NEXT_STEP} 个字")
                view = queries.record_view(engine, external_userid, record_id)
                if view is None:
                    raise _BadInput("没有找到这条跟进记录（可能已被重新生成），请刷新页面后重试")
                questions = _questions(values["open_questions"], list(view.open_questions))
                # A field differing from the built record is a correction; one set back to the
                # built value drops its earlier correction (None).
                corrections: dict[str, Any] = {}
                if next_step != view.record.next_step.strip():
                    corrections["next_step"] = next_step
                elif "next_step" in view.corrected:
                    corrections["next_step"] = None
                built_q = [str(x.get("text", "")).strip() for x in view.record.open_questions]
                if [x["text"] for x in questions] != built_q:
                    corrections["open_questions"] = questions
                elif "open_questions" in view.corrected:
                    corrections["open_questions"] = None
                service.save_edit(engine, external_userid=external_userid, record_id=record_id, editor=p.userid,
                                  now=now(), note=note, corrections=corrections)
            except (_BadInput, service.EditRefused) as exc:
                return customer_view(request, p, external_userid, status=400, form_error={record_id: str(exc)},
                                     form_values={record_id: values})
            log.info("crm_record_edited", userid=p.userid, external_userid=external_userid, record_id=record_id,
                     corrected=sorted(corrections))
            target = f"/crm/customers/{quote(external_userid, safe='')}?{urlencode({'saved': record_id})}#r-{record_id}"
            return RedirectResponse(target, status_code=303)

        return guarded(request, build, external_userid=external_userid, record_id=record_id)

    # -- 服务质量 --

    def quality_of(request: Request, p: Principal) -> queries.QualityView:
        queries.require_manager(p)
        q = request.query_params
        end = _date(q.get("end"), "结束日期") or local_today()
        start = _date(q.get("start"), "开始日期") or end - dt.timedelta(days=DEFAULT_DAYS - 1)
        if end < start:
            raise _BadInput("结束日期早于开始日期")
        if (end - start).days + 1 > MAX_DAYS:
            raise _BadInput(f"日期范围最长 {MAX_DAYS} 天")
        by = q.get("by") or "rep"
        if by not in ("rep", "store"):
            raise _BadInput("只能按销售（rep）或门店（store）统计")
        return queries.quality_view(engine, start=start, end=end, by="store" if by == "store" else "rep", tz=tz,
                                    settings=crm_settings, now=now())

    @router.get("/crm/quality", response_class=HTMLResponse)
    def quality_page(request: Request):
        def build(p: Principal) -> Response:
            v = quality_of(request, p)
            params = {"start": v.start.isoformat(), "end": v.end.isoformat(), "by": v.by}

            def link(target: str = "/crm/quality", **overrides: Any) -> str:
                return target + "?" + urlencode({**params, **overrides})

            answered = [r for r in v.rows if r.median_first_response_seconds is not None]
            chart = hbar_chart([r.name or r.key or "未归属门店" for r in answered],
                               [r.median_first_response_seconds / 60 for r in answered  # type: ignore[operator]
                                ], title="首次响应时间中位数（分钟）", fmt=lambda x: f"{x:.1f}")
            return templates.TemplateResponse(request, "crm_quality.html", {
                **common(request, p), "v": v, "link": link, "chart": Markup(chart),
                "settings": crm_settings, "row_name": row_name})
        return guarded(request, build)

    @router.get("/crm/quality.csv")
    def quality_csv(request: Request):
        def build(p: Principal) -> Response:
            v = quality_of(request, p)
            header = ["销售账号" if v.by == "rep" else "门店编号", "销售" if v.by == "rep" else "门店", "会话数",
                      "已回复会话", "首次响应中位数（分钟）", "首次响应平均（分钟）", "客户消息轮次", "未及时回复",
                      "风险回复"]
            rows = [[csv_safe(r.key), csv_safe(row_name(r, v.by)), str(r.sessions), str(r.answered),
                     minutes_cell(r.median_first_response_seconds), minutes_cell(r.mean_first_response_seconds),
                     str(r.customer_turns), str(r.unanswered), str(r.risky_replies)] for r in v.rows]
            filename = f"crm-quality-{v.by}-{v.start.isoformat()}-{v.end.isoformat()}.csv"
            return Response(csv_bytes(header, rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return guarded(request, build)

    return router


def row_name(r: QualityRow, by: str) -> str:
    if by == "store" and not r.key:
        return "未归属门店"
    return r.name or r.key

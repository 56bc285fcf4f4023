"""Rendering SOP step text and attachment fields with Jinja2, safely.

Operators write ``{{ store.name }}``-style placeholders in templates that run inside the worker
for every group, so a template must not be able to read Python internals, call functions or
burn CPU and memory. Jinja's sandbox blocks ``__class__``-style escapes but bounds neither time
nor size (a 100 MB string renders in 0.1 s), so the language offered here is deliberately small:

- variables from a fixed whitelist (:data:`VARIABLES`), passed as plain dicts of strings,
  never ORM objects; only their named fields can be read (``store.name``, not ``store.items``);
- a few filters (:data:`FILTERS`), ``{% if %}``, comparisons, ``~`` and arithmetic on numbers;
- no loops, ``{% set %}``, macros, includes or function/method calls. Without them a template
  runs in time linear in its source, which is capped (:data:`MAX_SOURCE_CHARS`);
- ``*``/``**``/``%`` refuse text and sequences (no ``'a' * 10**8``, no ``'%099999999d' % 1``)
  and numbers stay small; filters that can grow text are bounded; the output is capped while it
  streams (:data:`MAX_OUTPUT_CHARS`).

The same checks run when ``scrm sop lint`` compiles a template (with :func:`sample_context`) and
when the sender renders it for a group, so a template that lints clean renders the same way.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from scrm.sop.template import (
    WEEKDAYS,
    ImageAttachment,
    LinkAttachment,
    MiniProgramAttachment,
    SopTemplate,
    Step,
    parse_clock,
)
from scrm.wecom.messages import (
    MAX_LINK_DESC_BYTES,
    MAX_LINK_TITLE_BYTES,
    MAX_MINIPROGRAM_TITLE_BYTES,
    MAX_TEXT_BYTES,
    Attachment,
    MessageLimitError,
    PostContent,
    image_attachment,
    link_attachment,
    miniprogram_attachment,
    post_content,
)

# The only names a template may use, and the fields of the dict-valued ones.
DICT_FIELDS: dict[str, tuple[str, ...]] = {
    "store": ("code", "name", "address", "city"),
    "group": ("chat_id", "name", "owner"),
    "template": ("id", "name"),
}
VARIABLES: tuple[str, ...] = ("store", "group", "date", "weekday", "time", "template")
WEEKDAY_NAMES = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")

MAX_SOURCE_CHARS = 8_000  # per field, before rendering
MAX_OUTPUT_CHARS = 16_000  # per field, while rendering (the byte limits below are stricter)
MAX_VALUE_CHARS = 16_000  # any filter result
MAX_INT_BITS = 128  # prices and counts; nothing in a post needs more

# Byte limits checked on the rendered values (wecom-reference §3.7), by field path suffix.
BYTE_LIMITS: dict[tuple[str, ...], int] = {
    ("text",): MAX_TEXT_BYTES,
    ("link", "title"): MAX_LINK_TITLE_BYTES,
    ("link", "desc"): MAX_LINK_DESC_BYTES,
    ("miniprogram", "title"): MAX_MINIPROGRAM_TITLE_BYTES,
}
# Jinja names that exist without being passed in; none of them is offered to templates.
_SPECIAL_NAMES = {"self", "loop", "caller", "varargs", "kwargs", "super", "range", "lipsum", "cycler",
                  "joiner", "namespace", "dict"}

Loc = tuple[str | int, ...]


class TemplateRenderError(ValueError):
    """A template field that cannot be rendered safely or within WeCom's limits.

    ``reason`` is the readable cause, ``loc`` the field (``("steps", 0, "text")``, the same shape
    as a pydantic error location, so lint can map it to a YAML line) and ``lineno`` the line
    inside that field's text, when known.
    """

    def __init__(self, reason: str, *, loc: Loc = (), lineno: int | None = None):
        self.reason = reason
        self.loc = tuple(loc)
        self.lineno = lineno
        super().__init__(f"{format_loc(self.loc)}: {reason}" if self.loc else reason)

    def at(self, loc: Loc) -> TemplateRenderError:
        """The same error, located at a field (errors are raised before the field is known)."""
        return TemplateRenderError(self.reason, loc=loc, lineno=self.lineno)


def format_loc(loc: Loc) -> str:
    """``("steps", 0, "attachments", 1, "link", "title")`` -> ``steps[0].attachments[1].link.title``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------------------------
# The environment


class _Refused(SecurityError):
    """Raised from inside rendering for a construct the SOP language does not offer."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Refused(f"a number in this template grows beyond {MAX_INT_BITS} bits")
    return value


class SopEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus the bounds the sandbox leaves out (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context, operator, left, right):
        if not (_is_number(left) and _is_number(right)):
            kinds = f"{type(left).__name__} {operator} {type(right).__name__}"
            raise _Refused(f"'{operator}' only works on numbers in SOP templates (got {kinds}); "
                           "repeating or formatting text with operators is not allowed")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if right * math.log2(abs(left)) > MAX_INT_BITS:
                raise _Refused(f"{left} ** {right} is too large a number for a post")
        try:
            return _check_int(self.binop_table[operator](left, right))
        except OverflowError:
            raise _Refused(f"{left!r} {operator} {right!r} is too large a number for a post") from None

    def getattr(self, obj, attribute):
        return self._field(obj, attribute)

    def getitem(self, obj, argument):
        if isinstance(argument, str):
            return self._field(obj, argument)
        if isinstance(obj, (str, list, tuple)) and isinstance(argument, (int, slice)):
            try:
                return obj[argument]
            except IndexError:
                return self.undefined(f"index {argument} is out of range", obj=obj)
        return self.undefined("only fields (store.name) and positions (text[0]) can be read", obj=obj)

    def _field(self, obj, name: str):
        # Only the keys of our plain dicts: never attributes, so no methods and no internals.
        if isinstance(obj, Mapping) and not name.startswith("_") and name in obj:
            return obj[name]
        if isinstance(obj, Mapping):
            return self.undefined(f"there is no field {name!r} (fields: {', '.join(sorted(obj))})",
                                  obj=obj, name=name)
        return self.undefined(f"{name!r} cannot be read from a {type(obj).__name__}", obj=obj, name=name,
                              exc=SecurityError)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        raise _Refused("calling functions or methods is not allowed in SOP templates")


def _bounded(func):
    """Wrap a builtin filter so a result longer than MAX_VALUE_CHARS is refused."""

    @functools.wraps(func)  # keeps jinja_pass_arg (environment/context passing)
    def wrapper(*args, **kwargs):
        result = func(*args, **kwargs)
        if isinstance(result, str) and len(result) > MAX_VALUE_CHARS:
            raise _Refused(f"a filter produced more than {MAX_VALUE_CHARS:,} characters")
        return _check_int(result)

    return wrapper


def _replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    """``replace`` that computes the result's size first: ``'x'|replace('', 'long')`` can
    multiply a text's length, and chained it would grow exponentially."""
    text, old, new = str(value), str(old), str(new)
    limit = -1 if count is None or int(count) < 0 else int(count)  # str.replace: -1 means all
    hits = len(text) + 1 if old == "" else text.count(old)
    if limit >= 0:
        hits = min(hits, limit)
    if len(text) + hits * (len(new) - len(old)) > MAX_VALUE_CHARS:
        raise _Refused(f"replace would produce more than {MAX_VALUE_CHARS:,} characters")
    return text.replace(old, new, limit)


_SAFE_BUILTIN_FILTERS = ("abs", "capitalize", "default", "d", "int", "length", "lower", "round", "title",
                         "trim", "truncate", "upper", "urlencode")


def _finalize(value: Any) -> Any:
    """What ``{{ ... }}`` may print: text and numbers. None prints as nothing (a group with no
    owner); a dict or list would print a Python repr, so it is refused with a hint."""
    if value is None:
        return ""
    if isinstance(value, (str, int, float, Undefined)):
        return value
    raise _Refused(f"cannot print a {type(value).__name__} here; print one field, e.g. {{{{ store.name }}}}")


def _make_environment() -> SopEnvironment:
    env = SopEnvironment(
        undefined=StrictUndefined,
        autoescape=False,  # plain text for WeCom, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.globals.clear()  # no range, lipsum, cycler, joiner, namespace, dict
    builtin = env.filters
    env.filters = {name: _bounded(builtin[name]) for name in _SAFE_BUILTIN_FILTERS}
    env.filters["replace"] = _replace
    env.policies["truncate.leeway"] = 0  # truncate(20) means 20, not "up to 25"
    return env


ENV = _make_environment()
FILTERS: tuple[str, ...] = tuple(sorted(ENV.filters))


# --------------------------------------------------------------------------------------------
# Compile-time checks


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_STATEMENT_HINTS: dict[type, str] = {
    nodes.For: "{% for %} loops are not available in SOP templates",
    nodes.Assign: "{% set %} is not available in SOP templates",
    nodes.AssignBlock: "{% set %} is not available in SOP templates",
    nodes.With: "{% with %} is not available in SOP templates",
    nodes.Macro: "macros are not available in SOP templates",
    nodes.CallBlock: "{% call %} is not available in SOP templates",
    nodes.Call: "calling functions or methods is not allowed in SOP templates; use a filter, "
                "e.g. {{ store.name|upper }}",
    nodes.FilterBlock: "{% filter %} blocks are not available; use {{ value|filter }}",
    nodes.Include: "templates cannot include other templates",
    nodes.Import: "templates cannot import other templates",
    nodes.FromImport: "templates cannot import other templates",
    nodes.Extends: "templates cannot extend other templates",
    nodes.Block: "{% block %} is not available in SOP templates",
    nodes.Dict: "dict literals are not available in SOP templates",
}

_ALLOWED_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.Const, nodes.Name, nodes.Getattr,
    nodes.Getitem, nodes.Slice, nodes.Filter, nodes.Test, nodes.CondExpr, nodes.Compare, nodes.Operand,
    nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos, nodes.Concat, nodes.Add, nodes.Sub, nodes.Mul,
    nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow, nodes.Tuple, nodes.List, nodes.Keyword,
)


# Statements and expressions refused outright. A refused expression is reported once, not once
# per part (``''.__class__.__mro__`` is one problem, not three); a refused statement's body is
# still checked, because the operator keeps the body when removing the statement.
_HARD_REFUSALS = (nodes.Call, nodes.Dict)


def _unknown_variable(name: str) -> str:
    if name in _SPECIAL_NAMES:
        return f"{name!r} is not available in SOP templates; variables: {', '.join(VARIABLES)}"
    return f"unknown variable {name!r}{_suggest(name, VARIABLES)}; variables: {', '.join(VARIABLES)}"


def _field_name(var: str, name: str) -> str | None:
    """Why ``var.name`` is not allowed, or None when it is."""
    fields = DICT_FIELDS[var]
    if name not in fields:
        return f"{var} has no field {name!r}{_suggest(name, fields)}; {var} fields: {', '.join(fields)}"
    return None


def _read_key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None


class _FieldChecker:
    """Collects every problem of one field's syntax tree, each with its line.

    Three kinds, reported in this order when they share a line: statements the language does not
    offer; unknown names (the most common mistake, ``{{ stroe.name }}``, and Jinja's own names that
    exist without being passed in: self, loop, range, lipsum...); everything else. Names bound by a
    refused statement (``{% for x in ... %}``, ``{% set x %}``, macros) are not reported again.
    """

    STATEMENT, NAME, OTHER = 0, 1, 2

    def __init__(self, ast: nodes.Template):
        self.bound = {n.name for n in ast.find_all(nodes.Name) if n.ctx != "load"}
        self.bound |= {m.name for m in ast.find_all(nodes.Macro)}
        self.found: list[tuple[int, int, TemplateRenderError]] = []
        self.seen: set[tuple[int | None, str]] = set()

    def add(self, rank: int, reason: str, line: int | None) -> None:
        if (line, reason) not in self.seen:  # {{ stroe.name }}{{ stroe.code }} on one line: once
            self.seen.add((line, reason))
            self.found.append((rank, len(self.found), TemplateRenderError(reason, lineno=line)))

    def errors(self) -> list[TemplateRenderError]:
        """By line, then kind: lint prints them all; the renderer refuses on the first."""
        return [e for _, _, e in sorted(self.found, key=lambda f: (f[2].lineno or 0, f[0], f[1]))]

    def unknown_names(self, node: nodes.Node) -> list[nodes.Name]:
        names = [node] if isinstance(node, nodes.Name) else list(node.find_all(nodes.Name))
        return [n for n in names if n.ctx == "load" and n.name not in VARIABLES and n.name not in self.bound]

    def visit(self, node: nodes.Node) -> None:
        line = getattr(node, "lineno", None)
        statement = next((hint for kind, hint in _STATEMENT_HINTS.items()
                          if isinstance(node, kind) and not isinstance(node, _HARD_REFUSALS)), None)
        if statement:
            self.add(self.STATEMENT, statement, line)
            for child in [*getattr(node, "body", ()), *getattr(node, "else_", ())]:
                self.visit(child)
            return
        hard = self._hard_refusal(node)
        if hard:
            # Report what is inside it first ({{ range(10**9)|list }} is about 'range', not the call).
            names = self.unknown_names(node)
            for name in names:
                self.add(self.NAME, _unknown_variable(name.name), name.lineno)
            if not names:
                self.add(self.OTHER, hard, line)
            return
        if isinstance(node, nodes.Name):
            if node.ctx != "load" or node.name not in VARIABLES:
                if node.name not in self.bound:
                    self.add(self.NAME, _unknown_variable(node.name), line)
            return
        for reason, at in self._mistakes(node):
            self.add(self.OTHER, reason, at)
        for child in node.iter_child_nodes():
            self.visit(child)

    @staticmethod
    def _hard_refusal(node: nodes.Node) -> str | None:
        """Why this expression is refused as a whole (calls, internals, constructs not offered)."""
        if isinstance(node, _HARD_REFUSALS):
            return _STATEMENT_HINTS[nodes.Dict if isinstance(node, nodes.Dict) else nodes.Call]
        if not isinstance(node, _ALLOWED_NODES):
            return f"{type(node).__name__} is not available in SOP templates"
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            key = _read_key(node)
            if key is not None and key.startswith("_"):
                return f"attribute {key!r} is not allowed: templates may only read fields like store.name"
        return None

    @staticmethod
    def _mistakes(node: nodes.Node) -> Iterator[tuple[str, int | None]]:
        """Problems of this node alone; its parts are checked on their own."""
        line = getattr(node, "lineno", None)
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            key = _read_key(node)
            target = node.node
            if key is not None:
                if isinstance(target, nodes.Name) and target.name in DICT_FIELDS:
                    problem = _field_name(target.name, key)
                    if problem:
                        yield problem, line
                elif not (isinstance(target, nodes.Name) and target.name not in VARIABLES):
                    # (an unknown variable's field is reported as the unknown variable)
                    yield (f"{key!r} cannot be read here: only store, group and template have fields "
                           "(e.g. store.name)"), line
            elif isinstance(node, nodes.Getitem) and not isinstance(node.arg, (nodes.Const, nodes.Slice, nodes.Neg)):
                yield "only fixed positions can be read, e.g. {{ store.name[:4] }}", line
        if isinstance(node, nodes.Filter) and node.name not in ENV.filters:
            yield (f"unknown filter {node.name!r}{_suggest(node.name, ENV.filters)}; "
                   f"filters: {', '.join(FILTERS)}"), line
        if isinstance(node, nodes.Test) and node.name not in ENV.tests:
            yield f"unknown test {node.name!r}", line
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.Name) and child.name in DICT_FIELDS:
                    yield (f"{{{{ {child.name} }}}} is a group of fields; print one of them, e.g. "
                           f"{{{{ {child.name}.name }}}}"), child.lineno


def _parse(source: str) -> tuple[nodes.Template | None, list[TemplateRenderError]]:
    """The field's syntax tree and every problem found in it (no tree when it cannot be parsed)."""
    if len(source) > MAX_SOURCE_CHARS:
        return None, [TemplateRenderError(f"{len(source):,} characters; a template field may have at most "
                                          f"{MAX_SOURCE_CHARS:,}")]
    try:
        ast = ENV.parse(source)
    except TemplateSyntaxError as exc:
        return None, [TemplateRenderError(f"template syntax error: {exc.message}", lineno=exc.lineno)]
    except RecursionError:
        return None, [TemplateRenderError("the template is nested too deeply")]
    try:
        checker = _FieldChecker(ast)
        checker.visit(ast)
        errors = checker.errors()
        if not errors:
            # Jinja's own view of what the template reads from its context: a second line of defence.
            unknown = meta.find_undeclared_variables(ast) - set(VARIABLES)
            if unknown:
                errors = [TemplateRenderError(_unknown_variable(sorted(unknown)[0]))]
    except RecursionError:
        return None, [TemplateRenderError("the template is nested too deeply")]
    return ast, errors


def field_errors(source: str) -> list[TemplateRenderError]:
    """Every problem of one field's source, each with its line inside the field (lint reports
    them all in one run). Empty when the field compiles."""
    _, errors = _parse(source)
    if errors:
        return errors
    try:
        compile_field(source)
    except TemplateRenderError as exc:
        return [exc]
    return []


@functools.lru_cache(maxsize=1024)
def compile_field(source: str) -> jinja2.Template:
    """Parse and check one field's source; the compiled template is cached, as the sender renders
    the same step for hundreds of groups. Raises TemplateRenderError (without a field location)
    for the field's first problem (:func:`field_errors` lists them all)."""
    ast, errors = _parse(source)
    if errors or ast is None:
        raise errors[0] if errors else TemplateRenderError("the field does not parse")
    try:
        return ENV.from_string(ast)
    except TemplateSyntaxError as exc:  # TemplateAssertionError from the compiler
        raise TemplateRenderError(f"template error: {exc.message}", lineno=exc.lineno) from None
    except RecursionError:
        raise TemplateRenderError("the template is nested too deeply") from None


def _template_line(exc: BaseException) -> int | None:
    """The template line Jinja put in the traceback of a runtime error."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_field(source: str, context: Mapping[str, Any]) -> str:
    """Render one field's source with ``context``. Output is streamed and cut off at
    MAX_OUTPUT_CHARS, so a template can't allocate its way past the cap."""
    if not source:
        return ""
    template = compile_field(source)
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateRenderError(f"renders to more than {MAX_OUTPUT_CHARS:,} characters")
            parts.append(chunk)
    except TemplateRenderError:
        raise
    except UndefinedError as exc:
        raise TemplateRenderError(str(exc.message), lineno=_template_line(exc)) from None
    except SecurityError as exc:
        raise TemplateRenderError(str(exc), lineno=_template_line(exc)) from None
    except TemplateError as exc:
        raise TemplateRenderError(f"template error: {exc}", lineno=_template_line(exc)) from None
    except (TypeError, ValueError, ArithmeticError, IndexError, KeyError, RecursionError) as exc:
        # e.g. {{ 'a' + 1 }} or {{ 'x'|int / 0 }}: say what went wrong, without a Python repr.
        raise TemplateRenderError(f"cannot render: {type(exc).__name__}: {exc}",
                                  lineno=_template_line(exc)) from None
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Context


def build_context(
    *,
    group: Mapping[str, Any],
    store: Mapping[str, Any] | None,
    day: dt.date,
    at: str,
    template: SopTemplate,
) -> dict[str, Any]:
    """The variables a step is rendered with, as plain dicts of strings (pure).

    ``group`` has chat_id, name and owner (owner may be None); ``store`` is None for a group with
    no store, whose store fields are then empty strings so ``{{ store.name }}`` prints nothing
    instead of failing the whole post.
    """
    store = store or {}
    return {
        "store": {key: str(store.get(key) or "") for key in DICT_FIELDS["store"]},
        "group": {key: str(group.get(key) or "") for key in DICT_FIELDS["group"]},
        "date": day.isoformat(),
        "weekday": WEEKDAY_NAMES[day.weekday()],
        "time": parse_clock(at).strftime("%H:%M"),
        "template": {"id": template.id, "name": template.name},
    }


def group_fields(group: Any) -> dict[str, Any]:
    """A CustomerGroup row (or anything with chat_id, name, owner_userid) as build_context's
    ``group`` mapping, so rows never reach a template."""
    return {"chat_id": group.chat_id, "name": group.name or "", "owner": group.owner_userid}


def store_fields(store: Any | None) -> dict[str, Any] | None:
    """A Store row as build_context's ``store`` mapping (None stays None)."""
    if store is None:
        return None
    return {"code": store.code, "name": store.name, "address": store.address or "", "city": store.city or ""}


# Lint renders with long-ish, realistic values so content that would exceed WeCom's limits for a
# real store fails in CI rather than on the day.
SAMPLE_STORE = {
    "code": "SH0231",
    "name": "瑞幸咖啡(南京西路恒隆广场店)",
    "address": "上海市静安区南京西路1266号恒隆广场一期B1层B112-B113单元",
    "city": "上海",
}
SAMPLE_GROUP = {
    "chat_id": "wrOgQhDgAAcwMTB7YmDkbeBsgT_KAAAA",
    "name": "瑞幸咖啡南京西路恒隆广场店·福利1群",
    "owner": "zhangwei01",
}
SAMPLE_DAY = dt.date(2025, 1, 6)  # a Monday: lint is pure, so its sample week is fixed


def sample_days(template: SopTemplate) -> list[dt.date]:
    """Days to try a template on: its one-off dates, else the days of a sample week on its
    weekdays (all seven when it has none), so weekday-dependent text is tried as it will run."""
    if template.days.dates:
        return sorted(template.days.dates)[:14]
    week = [SAMPLE_DAY + dt.timedelta(days=i) for i in range(7)]
    weekdays = template.days.weekdays
    return [d for d in week if weekdays is None or WEEKDAYS[d.weekday()] in weekdays] or week


def sample_context(template: SopTemplate, *, step_index: int = 0, day: dt.date | None = None) -> dict[str, Any]:
    """A realistic context for lint: a long store name and address, the template's first target
    store and city when it names them, the step's time and a day the template runs on."""
    store = dict(SAMPLE_STORE)
    if template.targets.stores:
        store["code"] = template.targets.stores[0]
    if template.targets.cities:
        store["city"] = template.targets.cities[0]
    return build_context(group=SAMPLE_GROUP, store=store, day=day or sample_days(template)[0],
                         at=template.steps[step_index].at, template=template)


# --------------------------------------------------------------------------------------------
# Steps


# The attachment fields that are templates. Identifiers (appid, pic_media_id, media_id) are not:
# they are fixed by the model's validation and must reach WeCom as written.
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "link": ("title", "desc", "url", "picurl"),
    "miniprogram": ("title", "page"),
    "image": ("pic_url",),
}


def step_fields(step: Step | Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Every template field of a step, as (location inside the step, source). Takes a Step or
    the raw mapping from YAML (lint checks the text of steps that fail validation too)."""
    raw = step.model_dump() if isinstance(step, Step) else step
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


def check_step_sources(step: Step | Mapping[str, Any], step_index: int) -> list[TemplateRenderError]:
    """Every problem of every template field of a step, each located at its field and line (lint
    reports them all in one run). Takes the step alone so lint can check it even when another
    part of its file is invalid."""
    errors: list[TemplateRenderError] = []
    for sub, source in step_fields(step):
        errors.extend(exc.at(("steps", step_index, *sub)) for exc in field_errors(source))
    return errors


@functools.lru_cache(maxsize=1024)
def store_use_in(source: str) -> tuple[int, str] | None:
    """(line inside the field, what it reads, e.g. ``store.name``) of the first ``store`` the
    source reads, or None when it reads none. A source that does not parse is searched as text,
    so a syntax error elsewhere in the field doesn't hide the use."""
    try:
        ast = ENV.parse(source)
    except (TemplateSyntaxError, RecursionError):
        m = re.search(r"\{[{%][^}]*?(?P<store>\bstore\b)(?:\s*\.\s*(?P<key>\w+))?", source)
        if not m:
            return None
        return source.count("\n", 0, m.start("store")) + 1, f"store.{m['key']}" if m["key"] else "store"
    uses = [n for n in ast.find_all(nodes.Name) if n.name == "store" and n.ctx == "load"]
    if not uses:
        return None
    first = min(uses, key=lambda n: n.lineno)
    key = next((_read_key(n) for n in ast.find_all((nodes.Getattr, nodes.Getitem))
                if isinstance(n, (nodes.Getattr, nodes.Getitem)) and n.node is first), None)
    return first.lineno, f"store.{key}" if key else "store"


def first_store_use(steps: Iterable[Step | Mapping[str, Any]]) -> tuple[Loc, int, str] | None:
    """Where a template's steps first read a store field: (field location, line inside the field,
    e.g. ``store.name``), or None. Takes validated or raw steps (lint warns on both)."""
    for i, step in enumerate(steps):
        if not isinstance(step, (Step, Mapping)):
            continue
        for sub, source in step_fields(step):
            use = store_use_in(source)
            if use:
                return ("steps", i, *sub), use[0], use[1]
    return None


def uses_store_fields(template: SopTemplate) -> bool:
    """Whether any step of the template reads a ``store`` field. Such a template is never planned
    for a group without a store (it would print blanks where the store's name goes)."""
    return first_store_use(template.steps) is not None


_HTTP = re.compile(r"^https?://\S+$")


def _render(template: SopTemplate, step_index: int, sub: Loc, source: str, context: Mapping[str, Any]) -> str:
    loc = ("steps", step_index, *sub)
    try:
        value = render_field(source, context).strip()
    except TemplateRenderError as exc:
        raise exc.at(loc) from None
    path = tuple(str(part) for part in sub)
    limit = BYTE_LIMITS.get(path[-2:]) or BYTE_LIMITS.get(path[-1:])
    if limit is not None:
        size = len(value.encode("utf-8"))
        if size > limit:
            raise TemplateRenderError(f"{size:,} bytes after rendering; WeCom allows at most {limit:,} bytes "
                                      "(a Chinese character is 3 bytes)", loc=loc)
    if sub[-1] in ("url", "picurl", "pic_url") and value and not _HTTP.match(value):
        raise TemplateRenderError(f"renders to {value[:80]!r}, which is not an http(s) URL (put values "
                                  "into a URL with |urlencode, e.g. ?name={{ store.name|urlencode }})", loc=loc)
    if sub[-1] in ("title", "url", "page") and not value:
        raise TemplateRenderError("renders empty; WeCom requires it", loc=loc)
    return value


def render_step(template: SopTemplate, step_index: int, context: Mapping[str, Any]) -> PostContent:
    """The WeCom payload of one step for one group: ``{"text": {"content": ...}, "attachments":
    [...]}`` in add_msg_template's shapes (wecom-reference §3.7), built by ``scrm.wecom.messages``.
    ``text`` is left out when the step has none or it renders empty; optional empty fields (desc,
    picurl, pic_media_id) are left out. Link URLs are not rewritten here: the sender wraps them in
    tracked links.

    Raises TemplateRenderError naming the field (``steps[0].attachments[1].link.title``): WeCom's
    limits are checked here, per field, before the builders see the values."""
    step = template.steps[step_index]
    text = _render(template, step_index, ("text",), step.text, context) if step.text else ""
    attachments: list[Attachment] = []
    for j, att in enumerate(step.attachments):
        def field(*sub: str, source: str, j: int = j) -> str:
            return _render(template, step_index, ("attachments", j, *sub), source, context)

        if isinstance(att, LinkAttachment):
            title = field("link", "title", source=att.link.title)
            picurl = field("link", "picurl", source=att.link.picurl)
            desc = field("link", "desc", source=att.link.desc)
            attachments.append(link_attachment(title, field("link", "url", source=att.link.url),
                                               desc=desc, picurl=picurl))
        elif isinstance(att, MiniProgramAttachment):
            title = field("miniprogram", "title", source=att.miniprogram.title)
            attachments.append(miniprogram_attachment(
                title, att.miniprogram.appid, field("miniprogram", "page", source=att.miniprogram.page),
                pic_media_id=att.miniprogram.pic_media_id or ""))
        elif isinstance(att, ImageAttachment):
            if att.image.media_id:
                attachments.append(image_attachment(media_id=att.image.media_id))
            else:
                attachments.append(image_attachment(pic_url=field("image", "pic_url", source=att.image.pic_url)))
    if not text and not attachments:
        raise TemplateRenderError("renders empty and the step has no attachments: nothing to send",
                                  loc=("steps", step_index, "text"))
    try:
        return post_content(text or None, attachments)
    except MessageLimitError as exc:  # the fields were checked above; this is the builders' last guard
        raise TemplateRenderError(str(exc), loc=("steps", step_index)) from None


__all__ = [
    "BYTE_LIMITS", "DICT_FIELDS", "FILTERS", "MAX_OUTPUT_CHARS", "MAX_SOURCE_CHARS", "SAMPLE_DAY", "TEMPLATE_FIELDS",
    "TemplateRenderError", "VARIABLES", "WEEKDAY_NAMES", "build_context", "check_step_sources",
    "compile_field", "field_errors", "first_store_use", "format_loc", "group_fields", "render_field", "render_step",
    "sample_context", "sample_days", "step_fields", "store_fields", "store_use_in", "uses_store_fields",
]

"""The follow-up rules (``crm/*.yaml``): fact rules, question markers, next-step rules and the
rude / risky phrases of service quality, as pydantic models with their regexes compiled at load.

Loading and checking with file and line numbers lives in :mod:`scrm.crm.lint`; the builder
(:mod:`scrm.crm.followups`) only reads a validated :class:`CrmRules`.

Regexes are written by operators, so they are guarded: a pattern longer than
:data:`MAX_PATTERN_CHARS`, one with a quantified group whose body can itself repeat without bound
(``(a+)+``, ``(a|aa)*``, ``(.*)*``: the shapes that backtrack exponentially) or with a
back-reference is refused at load, and every message is scanned on its first
:data:`MAX_SCAN_CHARS` characters only.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

MAX_PATTERN_CHARS = 300
MAX_SCAN_CHARS = 2000  # a message is scanned on this many characters (a pasted novel is not a risk)
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

FactKind = Literal["product", "price", "quantity", "date", "time", "intent", "contact", "address", "other"]
PhraseKind = Literal["rude", "risky"]
# The placeholders a next step's text may fill from the session's facts: the first value of that kind.
PLACEHOLDERS = ("product", "price", "quantity", "date", "time", "intent", "contact", "address", "other")
MISSING_VALUE = "待确认"  # what a placeholder shows when the session has no fact of its kind


def _repeat_ops() -> tuple[Any, Any, Any]:
    from re import _constants, _parser  # type: ignore[attr-defined]

    return _parser, _constants, _constants.MAXREPEAT


def _can_repeat(items: Any) -> bool:
    """Whether a parsed sub-pattern holds a repetition without an upper bound (or an alternation
    of such), the body that makes a surrounding repetition backtrack exponentially."""
    parser, c, maxrepeat = _repeat_ops()
    for op, arg in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            lo, hi, body = arg
            if hi == maxrepeat or hi > 50 or _can_repeat(body):
                return True
        elif op == c.SUBPATTERN:
            if _can_repeat(arg[-1]):
                return True
        elif op == c.BRANCH:
            if any(_can_repeat(b) for b in arg[1]):
                return True
            if _overlapping_branches(arg[1]):
                return True
        elif op in (c.ASSERT, c.ASSERT_NOT):
            if _can_repeat(arg[1]):
                return True
    return False


def _overlapping_branches(branches: Any) -> bool:
    """Two alternatives that can start with the same literal (``a|ab``): repeated, they backtrack."""
    _, c, _ = _repeat_ops()
    firsts = []
    for b in branches:
        items = list(b)
        if not items:
            return True
        op, arg = items[0]
        if op != c.LITERAL:
            return True  # a class, a dot, a group: assume it may overlap
        firsts.append(arg)
    return len(firsts) != len(set(firsts))


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused (English, for lint), or None when it is fine."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"the regex is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a valid regex: {exc}"
    parser, c, maxrepeat = _repeat_ops()
    parsed = parser.parse(pattern)
    stack = [list(parsed)]
    while stack:
        items = stack.pop()
        for op, arg in items:
            if op == c.GROUPREF or op == c.GROUPREF_EXISTS:
                return "back-references are not allowed (they make matching slow on long messages)"
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                lo, hi, body = arg
                if (hi == maxrepeat or hi > 50) and _can_repeat(body):
                    return ("a repeated group whose body can itself repeat (like (a+)+ or (a|ab)*) backtracks "
                            "exponentially on some messages; rewrite it without the nested repetition")
                stack.append(list(body))
            elif op == c.SUBPATTERN:
                stack.append(list(arg[-1]))
            elif op == c.BRANCH:
                stack.extend(list(b) for b in arg[1])
            elif op in (c.ASSERT, c.ASSERT_NOT):
                stack.append(list(arg[1]))
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Matcher(_Strict):
    """Keywords (case-insensitive substrings) and/or one regex. The value of a regex match is its
    group named ``value``, else its first group, else the whole match."""

    keywords: list[str] = Field(default_factory=list)
    regex: str | None = None
    _compiled: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        out = [k.strip() for k in value]
        if any(not k for k in out):
            raise ValueError("a keyword is empty")
        if any(len(k) > 64 for k in out):
            raise ValueError("a keyword is longer than 64 characters")
        return out

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            problem = regex_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _compile(self) -> _Matcher:
        if not self.keywords and not self.regex:
            raise ValueError("give keywords or a regex (or both)")
        parts = []
        if self.regex:
            parts.append(f"(?:{self.regex})")
        # Keywords become one alternation (longest first, so 生椰拿铁 wins over 拿铁 at one place).
        if self.keywords:
            parts.append("(?P<_kw>" + "|".join(re.escape(k) for k in sorted(set(self.keywords), key=len,
                                                                              reverse=True)) + ")")
        self._compiled = re.compile("|".join(parts), re.IGNORECASE)
        return self

    @property
    def pattern(self) -> re.Pattern[str]:
        assert self._compiled is not None
        return self._compiled

    def matches(self, text: str) -> list[tuple[str, str]]:
        """Every (value, matched text) in ``text`` (scanned on its first MAX_SCAN_CHARS characters)."""
        out = []
        for m in self.pattern.finditer(text[:MAX_SCAN_CHARS]):
            whole = m.group(0)
            if not whole:
                continue
            out.append((match_value(m), whole))
        return out


class FactRule(_Matcher):
    id: str = Field(pattern=ID_PATTERN)
    kind: FactKind
    label: str = Field(min_length=1, max_length=32)  # Chinese, shown beside the value (产品, 价格 …)
    value: str | None = Field(default=None, max_length=64)  # a fixed value for every match (intents: 订货)


class Questions(_Strict):
    """A customer message containing one of these markers is a question."""

    markers: list[str] = Field(min_length=1)

    @field_validator("markers")
    @classmethod
    def _markers(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("a marker is empty")
        return value

    def is_question(self, text: str) -> bool:
        head = text[:MAX_SCAN_CHARS]
        return any(m in head for m in self.markers)


class When(_Strict):
    """A next step's conditions; every one given must hold (none given: always)."""

    facts: list[str] = Field(default_factory=list)  # any of these fact rule ids found in the session
    fact_kinds: list[FactKind] = Field(default_factory=list)  # any fact of these kinds found
    open_questions: bool | None = None  # questions left unanswered (True) / none left (False)
    last_from: Literal["customer", "rep"] | None = None  # who wrote the session's last message
    no_reply_hours: float | None = Field(default=None, gt=0)  # the customer's last message waits this long


class NextStepRule(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    when: When = Field(default_factory=When)
    # Chinese; may hold {date}, {product} … : the first value of that kind found in the session.
    text: str = Field(min_length=1, max_length=200)

    @field_validator("text")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        check_placeholders(value)
        return value

    def render(self, facts: list[dict[str, Any]]) -> str:
        return fill(self.text, facts)


def check_placeholders(text: str) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"the text does not parse: {exc} (write {{{{ and }}}} for a literal brace)") from exc
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; placeholders: "
                         + ", ".join("{" + p + "}" for p in PLACEHOLDERS))


def fill(text: str, facts: list[dict[str, Any]]) -> str:
    values: dict[str, str] = {}
    for fact in facts:
        values.setdefault(str(fact["kind"]), str(fact["value"]))
    return text.format(**{p: values.get(p, MISSING_VALUE) for p in PLACEHOLDERS})


class PhraseRule(_Matcher):
    id: str = Field(pattern=ID_PATTERN)
    kind: PhraseKind
    label: str = Field(min_length=1, max_length=32)  # Chinese: 不礼貌 / 违规承诺 …


class CrmRules(_Strict):
    facts: list[FactRule] = Field(default_factory=list)
    questions: Questions
    next_steps: list[NextStepRule] = Field(default_factory=list)
    default_next_step: str = Field(min_length=1, max_length=200)
    phrases: list[PhraseRule] = Field(default_factory=list)

    @field_validator("default_next_step")
    @classmethod
    def _default_placeholders(cls, value: str) -> str:
        check_placeholders(value)
        return value

    def phrase_label(self, rule_id: str) -> str:
        return next((p.label for p in self.phrases if p.id == rule_id), rule_id)


def match_value(m: re.Match[str]) -> str:
    """A fact match's value: the keyword, else the group named value, else the first group, else
    the whole match (stripped; the whole match when that leaves nothing)."""
    whole = m.group(0)
    groups = m.groupdict()
    if groups.get("_kw") is not None:
        value = groups["_kw"]
    elif groups.get("value") is not None:
        value = groups["value"]
    else:
        value = next((g for g in m.groups() if g is not None), whole)
    return value.strip() or whole

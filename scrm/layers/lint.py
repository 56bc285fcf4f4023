"""Loading and checking the layer and tag rules (``layers/``), with file and line numbers.

The rules folder (``layers.rules_dir``) holds any number of ``*.yaml`` / ``*.yml`` files; their
top-level keys (``layers``, ``default_layer``, ``rules``, ``tags``) are merged into one
:class:`~scrm.layers.rules.RuleSet`. Each top-level key lives in exactly one file: the rules are
tried in order, and an order spread over files sorted by name would be precedence nobody wrote
down. The shipped folder keeps layers, default and rules in ``layers.yaml`` and the tags in
``tags.yaml``.

Like ``scrm sop lint`` (whose YAML helpers this reuses), every problem is reported in one run, each
at its line: schema errors, duplicate keys, references to layers that don't exist, rules an earlier
rule always beats (warning), layers no rule fills (warning), WeCom tag names over 30 characters
once ``{name}`` / ``{city}`` is filled in, and more tags than a corp may hold. Parts of a file
that fail validation don't hide the checks on the parts that pass: layers, rules and tags are
validated one by one for the later checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scrm.layers.rules import (
    WECOM_TAG_NAME_MAX,
    Amount,
    Condition,
    Count,
    Days,
    Layer,
    LayerRule,
    RuleSet,
    TagRule,
    TagSettings,
)
from scrm.rules_folder import RulesFolder, read_rules_folder, short, suggest, validation_problems
from scrm.sop.lint import (
    ERROR,
    WARNING,
    Problem,
    errors_in,
    line_of,
)
from scrm.sop.render import format_loc

WECOM_CORP_TAGS_MAX = 3000  # add_corp_tag's 40126: 「最多为3000个」 corp tags, hand-set ones included
TOP_KEYS = ("layers", "default_layer", "rules", "tags")
# Without a database, store and city tag names are checked with these (long, real-world) values.
SAMPLE_STORE_NAMES = ("瑞幸咖啡(南京西路恒隆广场店)", "瑞幸咖啡(北京首都国际机场T3航站楼国际出发店)")
SAMPLE_CITIES = ("上海", "西双版纳傣族自治州")
SAMPLE_STORE_CODE = "SH0231"


@dataclass(frozen=True)
class StoreRef:
    """What tag names and conditions need of a store."""

    code: str
    name: str
    city: str = ""


class RulesError(Exception):
    """The rules folder does not load: ``problems`` says where and why (``file:line: message``)."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("the layer rules do not load:\n" + "\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------------------------
# Reading the folder


def _read(rules_dir: str | Path) -> RulesFolder:
    return read_rules_folder(rules_dir, TOP_KEYS, name="layers",
                             duplicate_note=" (rules are tried in the order written, so they stay in one list)")


# --------------------------------------------------------------------------------------------
# Checks


@dataclass
class _Parts:
    """What validated, piece by piece, with its index in the raw lists."""

    layers: list[tuple[int, Layer]] = field(default_factory=list)
    rules: list[tuple[int, LayerRule]] = field(default_factory=list)
    tags: TagSettings | None = None
    tag_rules: list[tuple[int, TagRule]] = field(default_factory=list)


def _validate_parts(folder: RulesFolder) -> tuple[_Parts, list[Problem]]:
    parts, problems = _Parts(), []
    data = folder.data
    for key, model in (("layers", Layer), ("rules", LayerRule)):
        raw = data.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            problems.append(folder.at((key,), f"{key}: a list is expected (got {short(raw)})"))
            continue
        if key == "layers" and not raw:
            problems.append(folder.at((key,), "layers: give at least one layer"))
        for i, item in enumerate(raw):
            try:
                valid = model.model_validate(item)
            except ValidationError as exc:
                problems.extend(validation_problems(folder, exc, (key, i), model))
                continue
            getattr(parts, key).append((i, valid))
    if "default_layer" in data and not isinstance(data["default_layer"], str):
        problems.append(folder.at(("default_layer",), f"default_layer: a layer id is expected "
                                                      f"(got {short(data['default_layer'])})"))
    raw_tags = data.get("tags", {})
    if raw_tags is None:
        raw_tags = {}
    if isinstance(raw_tags, dict):
        raw_rules = raw_tags.get("rules", [])
        try:
            parts.tags = TagSettings.model_validate({k: v for k, v in raw_tags.items() if k != "rules"})
        except ValidationError as exc:
            problems.extend(validation_problems(folder, exc, ("tags",), TagSettings))
        if isinstance(raw_rules, list):
            for i, item in enumerate(raw_rules):
                try:
                    parts.tag_rules.append((i, TagRule.model_validate(item)))
                except ValidationError as exc:
                    problems.extend(validation_problems(folder, exc, ("tags", "rules", i), TagRule))
        elif raw_rules is not None:
            problems.append(folder.at(("tags", "rules"), f"tags.rules: a list is expected (got {short(raw_rules)})"))
    else:
        problems.append(folder.at(("tags",), f"tags: a mapping is expected (got {short(raw_tags)})"))
    for key in data:
        if key not in TOP_KEYS:
            problems.append(folder.at((key,), f"unknown top-level key {key!r}{suggest(key, TOP_KEYS)}; "
                                              f"a rules file holds {', '.join(TOP_KEYS)}"))
    for key in ("layers", "default_layer"):
        if key not in data and folder.origin:
            problems.append(folder.at((), f"missing required key {key!r}: no file in the folder gives it"))
    return parts, problems


def _twice(folder: RulesFolder, items: Iterable[tuple[int, str]], loc_of: Any, what: str) -> list[Problem]:
    first: dict[str, int] = {}
    out = []
    for i, ident in items:
        if ident in first:
            out.append(folder.at(loc_of(i), f"{format_loc(loc_of(i))}: {what} {ident!r} is already used by "
                                            f"{format_loc(loc_of(first[ident])[:2])}"))
        else:
            first[ident] = i
    return out


def _raw_items(data: Any, *loc: str) -> list[tuple[int, dict]]:
    """The mapping items of the list at ``loc`` in the raw data, with their index (items that
    failed validation included: their ids and layers still count)."""
    for key in loc:
        data = data.get(key) if isinstance(data, dict) else None
    return [(i, item) for i, item in enumerate(data) if isinstance(item, dict)] if isinstance(data, list) else []


def _raw_ids(data: Any, *loc: str) -> list[tuple[int, str]]:
    return [(i, item["id"]) for i, item in _raw_items(data, *loc) if isinstance(item.get("id"), str)]


def _reference_problems(folder: RulesFolder, parts: _Parts) -> list[Problem]:
    """Ids used twice and layers that don't exist, each at its line."""
    data = folder.data
    problems = _twice(folder, _raw_ids(data, "layers"), lambda i: ("layers", i, "id"), "layer id")
    problems += _twice(folder, _raw_ids(data, "rules"), lambda i: ("rules", i, "id"), "rule id")
    problems += _twice(folder, _raw_ids(data, "tags", "rules"), lambda i: ("tags", "rules", i, "id"), "tag rule id")
    raw_layers = folder.data.get("layers")
    if not isinstance(raw_layers, list) or len(parts.layers) != len(raw_layers):
        return problems  # a layer failed validation: its id may be the one referred to
    ids = [layer.id for _, layer in parts.layers]
    known = f" (layers: {', '.join(ids)})"
    default = folder.data.get("default_layer")
    if isinstance(default, str) and default not in ids:
        problems.append(folder.at(("default_layer",), f"default_layer: {default!r} is not a layer"
                                                      f"{suggest(default, ids)}{known}"))
    for i, rule in parts.rules:
        if rule.layer not in ids:
            problems.append(folder.at(("rules", i, "layer"), f"rules[{i}].layer: rule {rule.id!r} puts customers in "
                                                             f"{rule.layer!r}, which is not a layer"
                                                             f"{suggest(rule.layer, ids)}{known}"))
    return problems


def _window_inside(inner: int | None, outer: int | None) -> bool:
    """Whether the last ``inner`` days lie inside the last ``outer`` days (None: all time)."""
    return outer is None or (inner is not None and inner <= outer)


def _within(inner: Any, outer: Any) -> bool:
    """Whether every customer ``inner``'s bounds allow, ``outer``'s allow. Counts and net GMV never
    shrink as the window grows, so a lower bound carries to a wider window (3 orders in 30 days
    are at least 1 order ever) and an upper bound to a narrower one; both bounds need the same."""
    inner_days, outer_days = getattr(inner, "within_days", None), getattr(outer, "within_days", None)
    if outer.min is not None:
        if inner.min is None or inner.min < outer.min:
            return False
        if not _window_inside(inner_days, outer_days):
            return False
    if outer.max is not None:
        if inner.max is None or inner.max > outer.max:
            return False
        if not _window_inside(outer_days, inner_days):
            return False
    return True


def implies(b: Condition, a: Condition) -> bool:
    """Whether every customer ``b`` holds for is one ``a`` holds for, as far as a cheap look can
    tell: False means "not shown", never "shown not to". Each key ``a`` sets must be held by ``b``
    (or by one of ``b``'s ``all`` items) at least as tightly: bounds inside ``a``'s over a window
    that keeps them, list values a subset, the same flag, the same ``not``; ``a``'s ``any`` needs
    one item ``b`` implies, or each of ``b``'s own ``any`` items implying one; its ``all`` every item."""
    keys = [name for name in a.model_fields_set if getattr(a, name) not in (None, [])]
    return bool(keys) and all(_key_implied(b, name, getattr(a, name)) for name in keys)


def _key_implied(b: Condition, name: str, mine: Any) -> bool:
    if any(_key_implied(item, name, mine) for item in b.all):
        return True
    theirs = getattr(b, name)
    if isinstance(mine, Count | Amount | Days):
        return theirs is not None and _within(theirs, mine)
    if isinstance(mine, bool):
        return theirs is mine
    if name == "any":
        return (any(implies(b, item) for item in mine)
                or (bool(b.any) and all(any(implies(own, item) for item in mine) for own in b.any)))
    if name == "all":
        return all(implies(b, item) for item in mine)
    if name == "not_":
        return theirs == mine
    if isinstance(mine, list):
        return bool(theirs) and set(theirs) <= set(mine)
    return False  # a key this check does not know: not shown


def _shadow_problems(folder: RulesFolder, parts: _Parts) -> list[Problem]:
    """A rule an earlier rule always beats: every customer it would take, the earlier one takes."""
    out = []
    for later, (j, rule) in enumerate(parts.rules):
        for i, earlier in parts.rules[:later]:
            if implies(rule.when, earlier.when):
                same = "the same" if rule.when == earlier.when else "a weaker"
                out.append(folder.at(("rules", j, "when"), (
                    f"rules[{j}].when: rule {rule.id!r} can never match: rule {earlier.id!r} "
                    f"(rules[{i}], line {line_of(folder.origin['rules'].root, ('rules', i))}) comes first and has "
                    f"{same} condition, so it takes every customer this one would. Move this rule above it or "
                    "narrow the earlier one"), WARNING))
                break
    return out


def _unused_layer_problems(folder: RulesFolder, parts: _Parts) -> list[Problem]:
    default = folder.data.get("default_layer")
    used = {item.get("layer") for _, item in _raw_items(folder.data, "rules")}
    if not used <= {layer.id for _, layer in parts.layers}:
        return []  # a rule names a layer that doesn't exist (an error): likely the one that looks empty
    return [folder.at(("layers", i, "id"), f"layers[{i}]: no rule puts anyone in layer {layer.id!r} and it is not "
                                           "the default_layer, so it stays empty", WARNING)
            for i, layer in parts.layers if layer.id not in used and layer.id != default]


def _condition_locs(cond: Condition, loc: tuple) -> Iterable[tuple[tuple, Condition]]:
    yield loc, cond
    for i, item in enumerate(cond.any):
        yield from _condition_locs(item, loc + ("any", i))
    for i, item in enumerate(cond.all):
        yield from _condition_locs(item, loc + ("all", i))
    if cond.not_ is not None:
        yield from _condition_locs(cond.not_, loc + ("not",))


def _store_problems(folder: RulesFolder, parts: _Parts, stores: Sequence[StoreRef]) -> list[Problem]:
    """Conditions naming stores or cities the database doesn't have (a typo matches nobody)."""
    codes = {s.code for s in stores}
    cities = {s.city for s in stores if s.city}
    out = []
    conditions: list[tuple[tuple, Condition]] = [(("rules", i, "when"), r.when) for i, r in parts.rules]
    conditions += [(("tags", "rules", i, "when"), t.when) for i, t in parts.tag_rules]
    for base, when in conditions:
        for loc, cond in _condition_locs(when, base):
            for key, values, known in (("stores", cond.stores, codes), ("cities", cond.cities, cities)):
                for k, value in enumerate(values):
                    if value not in known:
                        kind = "store code" if key == "stores" else "city of a store"
                        out.append(folder.at(loc + (key, k), f"{format_loc(loc + (key,))}: {value!r} is not a {kind} "
                                                             f"in the database{suggest(value, known)}; it matches "
                                                             "nobody", WARNING))
    return out


def _tag_problems(folder: RulesFolder, parts: _Parts, stores: Sequence[StoreRef] | None) -> list[Problem]:
    """Tag names over WeCom's 30 characters once filled in, names used twice in scrm's tag group,
    and more tags than a corp may hold."""
    tags = parts.tags
    if tags is None:
        return []
    out: list[Problem] = []
    names: dict[str, str] = {}  # tag name -> what makes it
    raw_tags = folder.data.get("tags") if isinstance(folder.data.get("tags"), dict) else {}

    def loc_of(key: str) -> tuple:
        return ("tags", key) if key in (raw_tags or {}) else ()

    def claim(name: str, what: str, loc: tuple) -> None:
        if name in names and names[name] != what:
            out.append(folder.at(loc, f"{format_loc(loc)}: the tag name {name!r} is made twice ({names[name]} and "
                                      f"{what}); tag names in scrm's tag group must differ"))
        names.setdefault(name, what)

    def too_long(name: str) -> bool:
        return len(name) > WECOM_TAG_NAME_MAX

    if tags.layer_tag is not None:
        for i, layer in parts.layers:
            name = tags.fill("layer_tag", name=layer.name) or ""
            loc = loc_of("layer_tag") or ("layers", i, "name")
            if too_long(name):
                out.append(folder.at(loc, f"{format_loc(loc)}: layer {layer.id!r} gets the tag {name!r} "
                                          f"({len(name)} characters); WeCom tag names hold at most "
                                          f"{WECOM_TAG_NAME_MAX}: shorten the layer's name or tags.layer_tag"))
            claim(name, f"layer {layer.id!r}", loc)
    for i, rule in parts.tag_rules:
        claim(rule.name, f"tag rule {rule.id!r}", ("tags", "rules", i, "name"))
    count = len(names)
    store_values = None if stores is None else [
        (s.code, {"name": s.name or s.code, "code": s.code}) for s in sorted(stores, key=lambda s: s.code)]
    city_values = None if stores is None else [(c, {"city": c}) for c in sorted({s.city for s in stores if s.city})]
    for key, what, real, samples in (
        ("store_tag", "store name", store_values,
         [(n, {"name": n, "code": SAMPLE_STORE_CODE}) for n in SAMPLE_STORE_NAMES]),
        ("city_tag", "city", city_values, [(c, {"city": c}) for c in SAMPLE_CITIES]),
    ):
        if getattr(tags, key) is None:
            continue
        loc = ("tags", key) if key in (raw_tags or {}) else ("tags",) if raw_tags else ()
        label = format_loc(("tags", key))
        if real is None:
            longest, values = max(samples, key=lambda item: len(tags.fill(key, **item[1]) or ""))
            name = tags.fill(key, **values) or ""
            if too_long(name):
                out.append(folder.at(loc, f"{label}: with a {what} as long as {longest!r} the tag is {name!r} "
                                          f"({len(name)} characters; WeCom allows {WECOM_TAG_NAME_MAX}); "
                                          "check the real names with `scrm layers lint --stores`", WARNING))
            continue
        filled = [(v, tags.fill(key, **values) or "") for v, values in real]
        long_ones = [(v, n) for v, n in filled if too_long(n)]
        if long_ones:
            shown = ", ".join(f"{n!r} ({len(n)})" for _, n in long_ones[:3])
            more = f" and {len(long_ones) - 3} more" if len(long_ones) > 3 else ""
            makes = f"{what}s make" if len(long_ones) > 1 else f"{what} makes"
            out.append(folder.at(loc, f"{label}: {len(long_ones)} {makes} tag "
                                      f"names over WeCom's {WECOM_TAG_NAME_MAX} characters: {shown}{more}; shorten "
                                      f"tags.{key} or those names"))
        for v, n in filled:
            claim(n, f"{key.removesuffix('_tag')} {v!r}", loc)
        count += len(filled)
    if count > WECOM_CORP_TAGS_MAX:
        unknown = "" if stores is not None else " before the per-store and per-city tags"
        out.append(folder.at(("tags",), f"tags: {count} tags{unknown}; WeCom holds at most {WECOM_CORP_TAGS_MAX} "
                                        "corp tags (hand-set tags included)"))
    return out


def _check(folder: RulesFolder, stores: Sequence[StoreRef] | None) -> tuple[RuleSet | None, list[Problem]]:
    parts, problems = _validate_parts(folder)
    problems += _reference_problems(folder, parts)
    if "rules" in folder.origin:
        problems += _shadow_problems(folder, parts)
    problems += _unused_layer_problems(folder, parts)
    problems += _tag_problems(folder, parts, stores)
    if stores is not None:
        problems += _store_problems(folder, parts, stores)
    ruleset = None
    if not errors_in(folder.problems + problems) and folder.origin:
        try:
            ruleset = RuleSet.model_validate(folder.data)
        except ValidationError as exc:  # a whole-ruleset check lint has no twin for
            problems += [folder.at((), err["msg"].removeprefix("Value error, ")) for err in exc.errors()]
    return ruleset, problems


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.path, p.line or 0))


def lint_rules(rules_dir: str | Path, *, stores: Sequence[StoreRef] | None = None) -> list[Problem]:
    """Every problem of the rules folder, errors and warnings, sorted by file and line: the entry
    point of ``scrm layers lint``. ``stores`` (from :func:`stores_for_lint`) checks the per-store and
    per-city tag names with the real names, and the store codes and cities conditions name;
    without it tag names are checked with long sample names (a warning)."""
    folder = _read(rules_dir)
    _, problems = _check(folder, stores)
    return _sorted(folder.problems + problems)


def load_ruleset(rules_dir: str | Path, *, stores: Sequence[StoreRef] | None = None) -> RuleSet:
    """The rules of the folder, merged and validated; :class:`RulesError` listing every error
    (``file:line: message``) when it has any. Warnings don't stop it."""
    folder = _read(rules_dir)
    ruleset, problems = _check(folder, stores)
    errors = errors_in(_sorted(folder.problems + problems))
    if errors or ruleset is None:
        raise RulesError(errors or [Problem(str(rules_dir), None, "no rules")])
    return ruleset


def defined_layer_ids(rules_dir: str | Path) -> set[str] | None:
    """The layer ids the rules define, or None when the folder does not load (``scrm sop lint``
    checks SOP targets against them only then)."""
    try:
        return set(load_ruleset(rules_dir).layer_ids())
    except RulesError:
        return None


def stores_for_lint(engine: Any) -> list[StoreRef]:
    """Every store (open or closed: a closed store's customers keep its tag), for the tag checks."""
    from sqlalchemy import select

    from scrm.stores.models import Store

    c = Store.__table__.c
    with engine.connect() as conn:
        return [StoreRef(r.code, r.name, r.city or "") for r in conn.execute(select(c.code, c.name, c.city))]


__all__ = [
    "ERROR", "WARNING", "WECOM_CORP_TAGS_MAX", "Problem", "RulesError", "StoreRef",
    "defined_layer_ids", "errors_in", "implies", "lint_rules", "load_ruleset", "stores_for_lint",
]

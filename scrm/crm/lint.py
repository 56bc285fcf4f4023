"""Loading and checking the follow-up rules (``crm/``), every problem at its ``file:line``.

The folder (``crm.rules_dir``) holds any number of ``*.yaml`` / ``*.yml`` files; their top-level
keys (``facts``, ``questions``, ``next_steps``, ``default_next_step``, ``phrases``) are merged into
one :class:`~scrm.crm.rules.CrmRules`. Each key lives in one file: next steps are tried in order,
and an order spread over files would be precedence nobody wrote down.

Checked, all in one run: YAML syntax and duplicate keys, the schema (unknown keys with a
suggestion), regexes that do not compile or could backtrack for ever (refused at their line), ids
used twice, next steps naming fact rules that don't exist, and next steps an earlier
unconditional one always beats (warning). Items that fail validation do not hide the checks on
the items that pass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, ScalarNode

from scrm.crm.rules import CrmRules, FactRule, NextStepRule, PhraseRule, Questions
from scrm.sop.lint import (
    ERROR,
    WARNING,
    Problem,
    _duplicate_keys,
    _Loader,
    _yaml_error,
    errors_in,
    line_of,
    template_files,
)
from scrm.sop.render import format_loc

TOP_KEYS = ("facts", "questions", "next_steps", "default_next_step", "phrases")
REQUIRED = ("questions", "default_next_step")


class RulesError(Exception):
    """The rules folder does not load: ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("the CRM rules do not load:\n" + "\n".join(str(p) for p in self.problems))


@dataclass
class _Source:
    path: str
    root: MappingNode
    key_lines: dict[str, int]


@dataclass
class _Folder:
    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, _Source] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def at(self, loc: tuple, message: str, severity: str = ERROR) -> Problem:
        src = self.origin.get(str(loc[0])) if loc else None
        if src is None:
            where = next(iter(self.origin.values()), None)
            return Problem(where.path if where else (self.files[0] if self.files else "crm"), None, message, severity)
        return Problem(src.path, line_of(src.root, loc), message, severity)


def _read(rules_dir: str | Path) -> _Folder:
    folder = _Folder()
    base = Path(rules_dir)
    if not base.exists():
        folder.problems.append(Problem(str(base), None, "no such file or directory"))
        return folder
    files = template_files(base)
    if not files:
        folder.problems.append(Problem(str(base), None, "no rule files (*.yaml) here"))
        return folder
    for file in files:
        name = str(file)
        folder.files.append(name)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            folder.problems.append(Problem(name, None, f"cannot read the file: {exc}"))
            continue
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                folder.problems.append(Problem(name, None, "the file is empty; it is ignored", WARNING))
                continue
            folder.problems.extend(_duplicate_keys(name, root))
            data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            folder.problems.append(_yaml_error(name, text, exc))
            continue
        except (ValueError, TypeError) as exc:
            folder.problems.append(Problem(name, None, f"cannot read a value: {exc}"))
            continue
        finally:
            loader.dispose()
        if not isinstance(root, MappingNode) or not isinstance(data, dict):
            folder.problems.append(Problem(name, root.start_mark.line + 1, "the top level must be a mapping of keys "
                                           f"({', '.join(TOP_KEYS)})"))
            continue
        src = _Source(name, root, {})
        for key_node, _ in root.value:
            if isinstance(key_node, ScalarNode):
                src.key_lines.setdefault(key_node.value, key_node.start_mark.line + 1)
        for key, value in data.items():
            key = str(key)
            if key in folder.origin:
                first = folder.origin[key]
                folder.problems.append(Problem(
                    name, src.key_lines.get(key),
                    f"{key!r} is already given in {first.path} (line {first.key_lines.get(key)}); each top-level "
                    "key lives in one file"))
                continue
            folder.origin[key] = src
            folder.data[key] = value
    return folder


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys_of(model: type[BaseModel], own: tuple) -> list[str]:
    models: list[Any] = [model]
    for part in own:
        if isinstance(part, int):
            continue
        found = [f for m in models for name, f in m.model_fields.items() if name == part]
        if not found:
            return []
        ann = found[0].annotation
        models = [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else []
    return sorted({name for m in models for name in m.model_fields})


def _validation_problems(folder: _Folder, exc: ValidationError, prefix: tuple, model: type[BaseModel]
                         ) -> list[Problem]:
    out = []
    for err in exc.errors():
        own = tuple(err["loc"])
        loc = prefix + own
        kind, msg, value = err["type"], err["msg"].removeprefix("Value error, "), err.get("input")
        where, label = loc, format_loc(loc)
        if kind == "extra_forbidden":
            label = format_loc(loc[:-1])
            what = f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _keys_of(model, own[:-1]))}"
        elif kind == "missing":
            where = loc[:-1]
            label = format_loc(where)
            what = f"missing required key {loc[-1]!r}"
        elif kind == "string_pattern_mismatch" and loc[-1] == "id":
            what = (f"{_short(value)} is not a valid id: lowercase letters, digits, '-' and '_', starting with a "
                    "letter or digit, at most 32 characters")
        elif kind == "literal_error":
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            what = f"{msg} (got {_short(value)}){_suggest(str(value), allowed)}"
        elif kind == "value_error" or not isinstance(value, (str, int, float, bool, type(None))):
            what = msg
        else:
            what = f"{msg} (got {_short(value)})"
        out.append(folder.at(where, f"{label}: {what}" if label else what))
    return out


@dataclass
class _Parts:
    facts: list[tuple[int, FactRule]] = field(default_factory=list)
    next_steps: list[tuple[int, NextStepRule]] = field(default_factory=list)
    phrases: list[tuple[int, PhraseRule]] = field(default_factory=list)
    questions: Questions | None = None


def _validate(folder: _Folder) -> tuple[_Parts, list[Problem]]:
    parts, problems = _Parts(), []
    data = folder.data
    for key, model in (("facts", FactRule), ("next_steps", NextStepRule), ("phrases", PhraseRule)):
        raw = data.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            problems.append(folder.at((key,), f"{key}: a list is expected (got {_short(raw)})"))
            continue
        for i, item in enumerate(raw):
            try:
                getattr(parts, key).append((i, model.model_validate(item)))
            except ValidationError as exc:
                problems.extend(_validation_problems(folder, exc, (key, i), model))
    if "questions" in data:
        try:
            parts.questions = Questions.model_validate(data["questions"])
        except ValidationError as exc:
            problems.extend(_validation_problems(folder, exc, ("questions",), Questions))
    if "default_next_step" in data:
        try:
            CrmRules.model_validate({"questions": {"markers": ["?"]}, "default_next_step": data["default_next_step"]})
        except ValidationError as exc:
            problems.extend(_validation_problems(folder, exc, (), CrmRules))
    for key in data:
        if key not in TOP_KEYS:
            problems.append(folder.at((key,), f"unknown top-level key {key!r}{_suggest(key, TOP_KEYS)}; "
                                              f"a rules file holds {', '.join(TOP_KEYS)}"))
    for key in REQUIRED:
        if key not in data and folder.files:
            problems.append(folder.at((), f"missing required key {key!r}: no file in the folder gives it"))
    return parts, problems


def _raw_ids(data: Any, key: str) -> list[tuple[int, str]]:
    raw = data.get(key)
    if not isinstance(raw, list):
        return []
    return [(i, item["id"]) for i, item in enumerate(raw) if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _checks(folder: _Folder, parts: _Parts) -> list[Problem]:
    out: list[Problem] = []
    for key, what in (("facts", "fact rule id"), ("next_steps", "next step id"), ("phrases", "phrase rule id")):
        first: dict[str, int] = {}
        for i, ident in _raw_ids(folder.data, key):
            if ident in first:
                out.append(folder.at((key, i, "id"), f"{key}[{i}].id: {what} {ident!r} is already used by "
                                                     f"{key}[{first[ident]}]"))
            else:
                first[ident] = i
    fact_ids = [ident for _, ident in _raw_ids(folder.data, "facts")]
    for i, step in parts.next_steps:
        for k, ident in enumerate(step.when.facts):
            if ident not in fact_ids:
                out.append(folder.at(("next_steps", i, "when", "facts", k),
                                     f"next_steps[{i}].when.facts: {ident!r} is not a fact rule"
                                     f"{_suggest(ident, fact_ids)}"))
    for j, step in parts.next_steps:
        for i, earlier in parts.next_steps:
            if i >= j:
                break
            if not earlier.when.model_fields_set or earlier.when == type(earlier.when)():
                out.append(folder.at(("next_steps", j, "id"), (
                    f"next_steps[{j}]: next step {step.id!r} can never be chosen: {earlier.id!r} (next_steps[{i}]) "
                    "comes first and has no condition"), WARNING))
                break
    return out


def lint_rules(rules_dir: str | Path) -> tuple[list[Problem], int]:
    """Every problem of the folder and how many files it holds."""
    folder = _read(rules_dir)
    parts, problems = _validate(folder)
    problems = folder.problems + problems + _checks(folder, parts)
    return problems, len(folder.files)


def load_rules(rules_dir: str | Path) -> CrmRules:
    """The folder's rules; raises RulesError when any error is found (warnings pass)."""
    folder = _read(rules_dir)
    parts, problems = _validate(folder)
    problems = folder.problems + problems + _checks(folder, parts)
    errors = errors_in(problems)
    if errors:
        raise RulesError(errors)
    return CrmRules.model_validate(folder.data)

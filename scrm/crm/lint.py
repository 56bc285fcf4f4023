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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scrm.crm.rules import CrmRules, FactRule, NextStepRule, PhraseRule, Questions
from scrm.rules_folder import RulesFolder, read_rules_folder, short, suggest, validation_problems
from scrm.sop.lint import (
    WARNING,
    Problem,
    errors_in,
)

TOP_KEYS = ("facts", "questions", "next_steps", "default_next_step", "phrases")
REQUIRED = ("questions", "default_next_step")


class RulesError(Exception):
    """The rules folder does not load: ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("the CRM rules do not load:\n" + "\n".join(str(p) for p in self.problems))


def _read(rules_dir: str | Path) -> RulesFolder:
    return read_rules_folder(rules_dir, TOP_KEYS, name="crm")


@dataclass
class _Parts:
    facts: list[tuple[int, FactRule]] = field(default_factory=list)
    next_steps: list[tuple[int, NextStepRule]] = field(default_factory=list)
    phrases: list[tuple[int, PhraseRule]] = field(default_factory=list)
    questions: Questions | None = None


def _validate(folder: RulesFolder) -> tuple[_Parts, list[Problem]]:
    parts, problems = _Parts(), []
    data = folder.data
    for key, model in (("facts", FactRule), ("next_steps", NextStepRule), ("phrases", PhraseRule)):
        raw = data.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            problems.append(folder.at((key,), f"{key}: a list is expected (got {short(raw)})"))
            continue
        for i, item in enumerate(raw):
            try:
                getattr(parts, key).append((i, model.model_validate(item)))
            except ValidationError as exc:
                problems.extend(validation_problems(folder, exc, (key, i), model))
    if "questions" in data:
        try:
            parts.questions = Questions.model_validate(data["questions"])
        except ValidationError as exc:
            problems.extend(validation_problems(folder, exc, ("questions",), Questions))
    if "default_next_step" in data:
        try:
            CrmRules.model_validate({"questions": {"markers": ["?"]}, "default_next_step": data["default_next_step"]})
        except ValidationError as exc:
            problems.extend(validation_problems(folder, exc, (), CrmRules))
    for key in data:
        if key not in TOP_KEYS:
            problems.append(folder.at((key,), f"unknown top-level key {key!r}{suggest(key, TOP_KEYS)}; "
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


def _checks(folder: RulesFolder, parts: _Parts) -> list[Problem]:
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
                                     f"{suggest(ident, fact_ids)}"))
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

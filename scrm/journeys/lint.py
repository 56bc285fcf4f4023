"""Loading and checking journey files, every problem with file and line (``scrm journeys lint``).

Built on scrm.sop.lint's YAML reading (line marks, duplicate keys, validation errors walked to their
line): a journey is checked like an SOP template, plus what only a journey has: its trigger names
layers that exist (when the layer rules can be read), its time is outside quiet hours, its fields
render for a realistic customer within WeCom's limits, and no two files share an id. Pure: the
quiet hours and the known layers come in as parameters.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from yaml.nodes import MappingNode, Node

from scrm.journeys.render import check_sources, render_journey, sample_context
from scrm.journeys.template import Journey
from scrm.rules_folder import keys_at
from scrm.sop.lint import (
    DEFAULT_QUIET_HOURS,
    Problem,
    _field_line,
    _line,
    _parse,
    _step_problems,
    _validation_problems,
    errors_in,
    line_of,
    template_files,
)
from scrm.sop.render import TemplateRenderError, format_loc

__all__ = ["Problem", "errors_in", "known_layers", "lint", "template_files"]

_UNKNOWN_KEY = re.compile(r"unknown key '([^']*)'")


def _journey_problems(path: str, root: Node, data: Any, exc: ValidationError) -> list[Problem]:
    """Validation problems, with an unknown key's suggestion taken from the journey's own keys."""
    problems = _validation_problems(path, root, data, exc)
    unknown = {tuple(e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden"}
    out: list[Problem] = []
    for p in problems:
        m = _UNKNOWN_KEY.search(p.message)
        loc = next((u for u in unknown if m and u[-1] == m.group(1) and line_of(root, u) == p.line), None)
        if m and loc is not None:
            close = difflib.get_close_matches(m.group(1), keys_at(Journey, loc[:-1]), n=1, cutoff=0.6)
            label = format_loc(loc[:-1])
            what = f"unknown key {m.group(1)!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            p = Problem(p.path, p.line, f"{label}: {what}" if label else what, p.severity)
        out.append(p)
    return out


def _render_problem(path: str, root: Node, exc: TemplateRenderError) -> Problem:
    return Problem(path, _field_line(root, exc.loc, exc.lineno), f"{format_loc(exc.loc)}: {exc.reason}")


def _layer_problems(path: str, root: Node, data: Mapping[str, Any], layers: Collection[str]) -> list[Problem]:
    trigger = data.get("trigger")
    if not isinstance(trigger, Mapping):
        return []
    problems = []
    named: list[tuple[tuple, Any]] = [(("trigger", "to_layer"), trigger.get("to_layer"))]
    from_layers = trigger.get("from_layers")
    if isinstance(from_layers, list):
        named += [(("trigger", "from_layers", i), v) for i, v in enumerate(from_layers)]
    for loc, value in named:
        if isinstance(value, str) and value not in layers:
            close = difflib.get_close_matches(value, list(layers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(path, line_of(root, loc), f"{format_loc(loc)}: {value!r} is not a layer{hint}; "
                                    f"layers: {', '.join(sorted(layers))}"))
    return problems


def _message_problems(path: str, root: Node, data: Mapping[str, Any], journey: Journey | None,
                      quiet_hours: tuple[str, str] | None) -> list[Problem]:
    """Template fields, rendering with a realistic customer (valid journeys), quiet hours."""
    source_errors = check_sources(data)
    problems = [_render_problem(path, root, exc) for exc in source_errors]
    if journey is not None and not source_errors:
        try:
            render_journey(journey, sample_context(journey))
        except TemplateRenderError as exc:
            problems.append(_render_problem(path, root, exc))
    # The step checks of SOP lint (quiet hours, mini program pages) on the journey as one step.
    step_like = {k: data[k] for k in ("at", "attachments") if k in data}
    for p in _step_problems(path, root, [step_like], quiet_hours):
        message = p.message.replace("steps[0].", "")
        problems.append(Problem(path, _step_line(root, message, p.line), message, p.severity))
    return problems


def _step_line(root: Node, message: str, fallback: int | None) -> int | None:
    """SOP lint located the step problem under ``steps[0]``; a journey has the keys at the top."""
    field = message.split(":", 1)[0]
    parts: list[str | int] = []
    for part in re.findall(r"[A-Za-z_]+|\[\d+\]", field):
        parts.append(int(part[1:-1]) if part.startswith("[") else part)
    return line_of(root, tuple(parts)) if parts else fallback


def lint(path: str | Path, *, quiet_hours: tuple[str, str] | None = DEFAULT_QUIET_HOURS,
         layers: Collection[str] | None = None) -> tuple[list[Journey], list[Problem]]:
    """Load and check every journey in ``path`` (a file or a folder). ``layers``: the layer ids
    the trigger may name (None: not checked, e.g. when the layer rules can't be read). Returns the
    journeys that loaded without error and every problem, sorted by file and line."""
    base = Path(path)
    if not base.exists():
        return [], [Problem(str(base), None, "no such file or directory")]
    journeys: list[Journey] = []
    problems: list[Problem] = []
    first_file_of: dict[str, str] = {}
    for file in template_files(base):
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, None, f"cannot read the file: {exc}"))
            continue
        root, data, file_problems = _parse(name, text)
        if root is None and file_problems and "is empty" in file_problems[0].message:
            file_problems = [Problem(name, None, "the file is empty; a journey needs id, name, trigger, at, "
                                                 "channel and text")]
        if root is None:
            problems.extend(file_problems)
            continue
        if not isinstance(root, MappingNode) or not isinstance(data, dict):
            problems.append(Problem(name, _line(root), "the top level must be a mapping of keys (id, name, trigger, "
                                                       "...), one journey per file"))
            continue
        found = list(file_problems)
        journey: Journey | None = None
        try:
            journey = Journey.model_validate(data)
        except ValidationError as exc:
            found.extend(_journey_problems(name, root, data, exc))
        found.extend(_message_problems(name, root, data, journey, quiet_hours))
        if layers is not None:
            found.extend(_layer_problems(name, root, data, layers))
        if journey is not None:
            if journey.id in first_file_of:
                found.append(Problem(name, line_of(root, ("id",)),
                                     f"journey id {journey.id!r} is already used by {first_file_of[journey.id]}"))
            else:
                first_file_of[journey.id] = name
                if not errors_in(found):
                    journeys.append(journey)
        problems.extend(found)
    problems.sort(key=lambda p: (p.path, p.line or 0))
    return journeys, problems


def known_layers(rules_dir: str | Path) -> set[str] | None:
    """The layer ids of the layer rules in ``rules_dir`` (``layers.rules_dir``), or None when
    there are none or they don't read as a rule set (their own lint says why)."""
    import yaml

    from scrm.layers.rules import RuleSet

    ids: set[str] = set()
    for file in template_files(rules_dir):
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        if isinstance(data, dict) and "layers" in data:
            try:
                ids |= {layer.id for layer in RuleSet.model_validate(data).layers}
            except ValidationError:
                return None
    return ids or None

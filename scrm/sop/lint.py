"""Loading and checking SOP template files, with file and line numbers.

Operators edit YAML by hand and run ``scrm sop lint`` in CI, so every problem has to point at
the line to fix. The YAML is composed into PyYAML's node tree (which keeps line marks) before it
is turned into data; a pydantic error's ``loc`` is then walked down that tree to the key it
names. Every problem is reported in one run, not just the first: every problem of every template
field, and the per-step checks run on the raw steps of a file that failed validation wherever a
step can still be read, so an operator fixes a file in one round.

Beyond the model's own validation (``scrm/sop/template.py``) lint catches what the model cannot
see: duplicate keys (PyYAML silently keeps the last one), the same template id in two files,
template fields that do not compile or render (unknown variables, unsafe constructs, WeCom's
byte limits with realistic values), posts inside quiet hours, two posts of a template at the
same time and mini program pages WeChat can't open. Those are errors. A template that reads
``store`` fields while its targets can include groups without a store gets a warning: it still
loads (such groups are skipped by the planner), and warnings don't fail lint unless asked to.
It is pure: settings come in as parameters.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scrm.sop.render import (
    Loc,
    TemplateRenderError,
    check_step_sources,
    first_store_use,
    format_loc,
    render_step,
    sample_context,
    sample_days,
)
from scrm.sop.template import (
    ImageAttachment,
    LinkAttachment,
    MiniProgramAttachment,
    SopTemplate,
    parse_clock,
)

ERROR = "error"
WARNING = "warning"

DEFAULT_QUIET_HOURS = ("22:00", "08:00")  # sop.quiet_hours_start / _end defaults
TEMPLATE_SUFFIXES = (".yaml", ".yml")

# pydantic puts the union member's class name into the loc of attachment errors.
_UNION_TAGS: dict[str, tuple[type[BaseModel], str]] = {
    "LinkAttachment": (LinkAttachment, "link"),
    "MiniProgramAttachment": (MiniProgramAttachment, "miniprogram"),
    "ImageAttachment": (ImageAttachment, "image"),
}
_ATTACHMENT_KINDS = tuple(kind for _, kind in _UNION_TAGS.values())


@dataclass(frozen=True)
class Problem:
    """One thing to fix, printed as ``path:line: message`` (the format editors and CI link).

    An error keeps the file's template from loading and fails ``scrm sop lint``; a warning
    (printed as ``path:line: warning: message``) does neither."""

    path: str
    line: int | None
    message: str
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity != WARNING

    def __str__(self) -> str:
        text = f"warning: {self.message}" if self.severity == WARNING else self.message
        return f"{self.path}:{self.line}: {text}" if self.line else f"{self.path}: {text}"


def errors_in(problems: Iterable[Problem]) -> list[Problem]:
    """The problems that refuse templates (callers acting on templates check only these)."""
    return [p for p in problems if p.is_error]


@dataclass(frozen=True)
class LoadedTemplate:
    """A validated template with where it came from, so later checks can name lines."""

    template: SopTemplate
    path: str
    root: MappingNode


@dataclass(frozen=True)
class _ParsedFile:
    """A file that reads as a mapping, for lint's checks whether or not it loaded: ``template`` is
    None when it failed validation (its raw ``data`` is checked instead)."""

    path: str
    root: MappingNode
    data: dict
    template: SopTemplate | None


# --------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader for templates: ``at: 10:30`` stays the text '10:30' (YAML 1.1 reads it as the
    base-60 integer 630) and dates stay text, so pydantic parses them and a bad date is reported
    at its line instead of crashing the loader."""


def _int_or_clock(loader: _Loader, node: ScalarNode) -> Any:
    return loader.construct_scalar(node) if ":" in node.value else loader.construct_yaml_int(node)


def _float_or_clock(loader: _Loader, node: ScalarNode) -> Any:
    return loader.construct_scalar(node) if ":" in node.value else loader.construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_or_clock)
_Loader.add_constructor("tag:yaml.org,2002:float", _float_or_clock)
def _as_text(loader: _Loader, node: ScalarNode) -> Any:
    return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _as_text)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _yaml_error(path: str, text: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    if "<block end>" in problem:
        message += "; check the indentation of this line and the one above"
    # An error found at the end of the stream is marked on the line after the last one.
    line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark else None
    return Problem(path, line, message)


def _duplicate_keys(path: str, root: Node) -> list[Problem]:
    """Keys given twice in one mapping. PyYAML keeps the last silently, which turns a copy-paste
    slip into a post at the wrong time; walked on the node tree, where both are still there."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value != "<<":
                    if key.value in first:
                        problems.append(Problem(path, _line(key), f"duplicate key {key.value!r} (first at line "
                                                f"{first[key.value]}); YAML would keep only the last one"))
                    else:
                        first[key.value] = _line(key)
                stack.append(value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return problems


def _parse(path: str, text: str) -> tuple[Node | None, Any, list[Problem]]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None, [Problem(path, None, "the file is empty; a template needs id, name and steps")]
        problems = _duplicate_keys(path, root)
        return root, loader.construct_document(root), problems
    except yaml.YAMLError as exc:
        return None, None, [_yaml_error(path, text, exc)]
    except (ValueError, TypeError) as exc:  # an explicit tag on a bad value, e.g. !!int abc
        return None, None, [Problem(path, None, f"cannot read a value: {exc}")]
    finally:
        loader.dispose()


def _node_at(root: Node, loc: Iterable[str | int]) -> tuple[int, Node | None]:
    """The line of the deepest key or item of ``loc`` found in the tree, and its node (None
    when the walk stopped early, e.g. at a missing key: the parent's line is the best guess)."""
    node: Node | None = root
    line = _line(root)
    for part in loc:
        if isinstance(node, MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == part:
                    line, node = _line(key), value
                    break
            else:
                if part in _UNION_TAGS:
                    continue
                return line, None
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = _line(node)
        else:
            return line, None
    return line, node


def line_of(root: Node, loc: Iterable[str | int]) -> int:
    return _node_at(root, loc)[0]


# --------------------------------------------------------------------------------------------
# Validation errors -> problems


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys_at(loc: tuple) -> list[str]:
    """The keys allowed in the mapping at ``loc``, to suggest the intended one for a typo."""
    models: list[type[BaseModel]] = [SopTemplate]
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _UNION_TAGS:
            models = [_UNION_TAGS[part][0]]
            continue
        found = [f for m in models for name, f in m.model_fields.items() if (f.alias or name) == part]
        if not found:
            return []
        models = _models_in(found[0].annotation)
    return sorted({(f.alias or name) for m in models for name, f in m.model_fields.items()})


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _data_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(err: Mapping[str, Any]) -> tuple[tuple, str]:
    """(where, what) for one pydantic error, in an operator's words."""
    loc, kind, msg = tuple(err["loc"]), err["type"], err["msg"]
    msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    if kind == "extra_forbidden":  # labelled with the mapping, located at the key
        return loc, f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _keys_at(loc[:-1]))}"
    if kind == "missing":
        return loc[:-1], f"missing required key {loc[-1]!r}"
    if kind == "string_pattern_mismatch" and loc[-1] == "appid":
        return loc, f"{_short(value)} is not a mini program appid: 'wx' and 16 letters or digits"
    if kind == "string_pattern_mismatch" and loc[-1] == "id":
        return loc, (f"{_short(value)} is not a valid id: lowercase letters, digits, '-' and '_', "
                     "starting with a letter or digit, at most 64 characters")
    if kind == "too_short" and loc == ("steps",):
        return loc, "a template needs at least one step"
    if kind == "value_error" and loc == ("days",) and "until" in msg:
        return ("days", "until"), msg
    if kind == "value_error":
        return loc, msg
    if isinstance(value, (str, int, float, bool)) or value is None:
        return loc, f"{msg} (got {_short(value)})"
    return loc, msg


def _duplicate_step_loc(data: Any, msg: str) -> tuple:
    """'two steps share the id X' is raised on the template; point at the second such step."""
    m = re.search(r"share the id '(.*)'", msg)
    steps = data.get("steps") if isinstance(data, dict) else None
    if not m or not isinstance(steps, list):
        return ()
    seen = False
    for i, step in enumerate(steps):
        key = str(step.get("id") or i + 1) if isinstance(step, dict) else str(i + 1)
        if key == m.group(1):
            if seen:
                return ("steps", i, "id") if isinstance(step, dict) and step.get("id") else ("steps", i)
            seen = True
    return ()


def _validation_problems(path: str, root: Node, data: Any, exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    reported_attachments: set[tuple] = set()
    for error in exc.errors():
        err: Mapping[str, Any] = error
        loc = tuple(err["loc"])
        tag_at = next((i for i, part in enumerate(loc) if isinstance(part, str) and part in _UNION_TAGS), None)
        if tag_at is not None:
            # An attachment is tried as each kind in turn; keep only the errors of the kind it
            # declares (its key), or say once that it declares none or several.
            att_loc, tag = loc[:tag_at], str(loc[tag_at])
            raw = _data_at(data, att_loc)
            kinds = [k for k in _ATTACHMENT_KINDS if isinstance(raw, dict) and k in raw]
            if len(kinds) == 1:
                if _UNION_TAGS[tag][1] != kinds[0]:
                    continue
                err = dict(err, loc=loc[:tag_at] + loc[tag_at + 1:])
            else:
                if att_loc in reported_attachments:
                    continue
                reported_attachments.add(att_loc)
                if kinds:
                    where, what = att_loc, f"an attachment is exactly one of {', '.join(_ATTACHMENT_KINDS)}; " \
                                           f"this one has {', '.join(kinds)}: split it into separate attachments"
                else:
                    others = [str(k) for k in raw] if isinstance(raw, dict) else []
                    where = att_loc + (others[0],) if others else att_loc
                    hint = (f"unknown key {others[0]!r}{_suggest(others[0], list(_ATTACHMENT_KINDS))}; "
                            if others else "")
                    what = f"{hint}an attachment is one of {', '.join(_ATTACHMENT_KINDS)}"
                problems.append(Problem(path, line_of(root, where), f"{format_loc(att_loc)}: {what}"))
                continue
        where, what = _message(err)
        if not where and "share the id" in what:
            where = _duplicate_step_loc(data, what)
        label = format_loc(where[:-1] if err["type"] == "extra_forbidden" else where)
        problems.append(Problem(path, line_of(root, where), f"{label}: {what}" if label else what))
    return problems


# --------------------------------------------------------------------------------------------
# Loading


def template_files(path: str | Path) -> list[Path]:
    """The template files under ``path`` (a directory, searched recursively but skipping hidden
    files and directories, sorted) or ``path`` itself when it is a file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(
        p for p in path.rglob("*")
        if p.suffix in TEMPLATE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _load(path: str | Path) -> tuple[list[LoadedTemplate], list[Problem], list[_ParsedFile]]:
    """The templates that load, the problems found reading and validating the files, and every
    file that reads as a mapping (loaded or not) for lint's further checks."""
    base = Path(path)
    if not base.exists():
        return [], [Problem(str(base), None, "no such file or directory")], []
    loaded: list[LoadedTemplate] = []
    problems: list[Problem] = []
    parsed: list[_ParsedFile] = []
    first_file_of: dict[str, str] = {}
    for file in template_files(base):
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, None, f"cannot read the file: {exc}"))
            continue
        root, data, file_problems = _parse(name, text)
        problems.extend(file_problems)
        if root is None:
            continue
        if not isinstance(root, MappingNode) or not isinstance(data, dict):
            problems.append(Problem(name, _line(root), "the top level must be a mapping of keys "
                                    "(id, name, steps, ...), one template per file"))
            continue
        try:
            template = SopTemplate.model_validate(data)
        except ValidationError as exc:
            problems.extend(_validation_problems(name, root, data, exc))
            parsed.append(_ParsedFile(name, root, data, None))
            continue
        parsed.append(_ParsedFile(name, root, data, template))
        if template.id in first_file_of:
            problems.append(Problem(name, line_of(root, ("id",)),
                                    f"template id {template.id!r} is already used by {first_file_of[template.id]}"))
            continue
        first_file_of[template.id] = name
        if not file_problems:
            loaded.append(LoadedTemplate(template, name, root))
    problems.sort(key=lambda p: (p.path, p.line or 0))
    return loaded, problems, parsed


def load_templates(path: str | Path) -> tuple[list[SopTemplate], list[Problem]]:
    """Parse and validate the templates in ``path`` (a directory or one file), without lint's
    further checks (see :func:`lint`).

    Returns the templates that validated and every problem found. A file with a problem does
    not contribute a template; a second file with an id already seen is a problem, not a
    template. Callers that act on templates should refuse to when problems is not empty."""
    loaded, problems, _ = _load(path)
    return [item.template for item in loaded], problems


# --------------------------------------------------------------------------------------------
# Checks on validated templates


def _in_quiet_hours(at: dt.time, start: dt.time, end: dt.time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= at < end
    return at >= start or at < end  # the window wraps midnight, e.g. 22:00-08:00


def _field_line(root: Node, loc: Loc, lineno: int | None) -> int:
    """The file line of line ``lineno`` inside the template field at ``loc``."""
    line, node = _node_at(root, loc)
    if lineno and isinstance(node, ScalarNode):
        # Block scalars (text: |) start on the line after the key; others on the key's line.
        line = _line(node) + lineno - (0 if node.style in ("|", ">") else 1)
    return line


def _render_problem(path: str, root: Node, exc: TemplateRenderError) -> Problem:
    return Problem(path, _field_line(root, exc.loc, exc.lineno), f"{format_loc(exc.loc)}: {exc.reason}")


def _raw_steps(data: Any) -> list[Any]:
    steps = data.get("steps") if isinstance(data, Mapping) else None
    return steps if isinstance(steps, list) else []


def _readable_clock(step: Any) -> dt.time | None:
    """A step's time when it can be read (the raw step of a file that failed validation may
    have a bad one or none: its own error says so)."""
    value = step.get("at") if isinstance(step, Mapping) else None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return None
    try:
        return parse_clock(str(value))
    except ValueError:
        return None


def _source_problems(path: str, root: Node, steps: list[Any]) -> list[Problem]:
    """Every problem of every template field, from raw or validated steps."""
    return [_render_problem(path, root, exc)
            for i, step in enumerate(steps) if isinstance(step, Mapping)
            for exc in check_step_sources(step, i)]


def _step_problems(path: str, root: Node, steps: list[Any], quiet_hours: tuple[str, str] | None) -> list[Problem]:
    """Timing and page checks of each step that can be read: inside quiet hours, two steps at
    the same time, a mini program page WeChat won't open. Raw steps of a file that failed
    validation are checked too, so these don't wait for the next lint run."""
    problems: list[Problem] = []

    def at(loc: tuple, message: str) -> None:
        problems.append(Problem(path, line_of(root, loc), f"{format_loc(loc)}: {message}"))

    quiet = (parse_clock(quiet_hours[0]), parse_clock(quiet_hours[1])) if quiet_hours else None
    first_at: dict[dt.time, int] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            continue
        clock = _readable_clock(step)
        if clock is not None:
            shown = clock.strftime("%H:%M")
            if quiet_hours and quiet and _in_quiet_hours(clock, *quiet):
                at(("steps", i, "at"), f"{shown} is inside quiet hours ({quiet_hours[0]}-{quiet_hours[1]}), "
                                       "when no posts are sent; move it")
            if clock in first_at:
                at(("steps", i, "at"), f"{shown} is the same time as steps[{first_at[clock]}]; a group gets one "
                                       "post at a time, so give each step its own time")
            else:
                first_at[clock] = i
        attachments = step.get("attachments")
        for j, att in enumerate(attachments if isinstance(attachments, list) else []):
            card = att.get("miniprogram") if isinstance(att, Mapping) else None
            page = card.get("page") if isinstance(card, Mapping) else None
            if isinstance(page, str):
                page = page.split("?", 1)[0]
                if "{" not in page and not page.endswith(".html"):
                    at(("steps", i, "attachments", j, "miniprogram", "page"),
                       f"{page!r} should end in .html (e.g. pages/index/index.html): WeChat opens a mini "
                       "program page sent from WeCom only by its .html path, otherwise it shows 'page not found'")
    return problems


def _store_warning(path: str, root: Node, targets: Any, steps: list[Any]) -> list[Problem]:
    """A warning at the first ``store`` field of a template whose targets can include groups
    without a store (neither ``stores`` nor ``cities``, which both imply one, nor ``with_store``):
    the planner skips those groups rather than send a post with blanks where the store's name goes."""
    if targets is None:
        targets = {}
    if not isinstance(targets, Mapping) or any(targets.get(key) for key in ("stores", "cities", "with_store")):
        return []
    use = first_store_use(steps)
    if use is None:
        return []
    loc, lineno, field = use
    return [Problem(path, _field_line(root, loc, lineno),
                    f"{format_loc(loc)}: uses {{{{ {field} }}}} but the targets can include groups without a "
                    "store; those groups will not get this template ('group has no store' in scrm sop plan). "
                    "Set targets.with_store: true (or target stores or cities) to send it only to groups "
                    "with a store",
                    WARNING)]


def _layer_warnings(path: str, root: Node, targets: Any, layer_ids: Collection[str] | None) -> list[Problem]:
    """A warning at each layer the targets name that the layer rules don't define: no group ever
    has it, so the key matches nothing (a typo, or a layer renamed in layers/)."""
    if layer_ids is None or not isinstance(targets, Mapping):
        return []
    known = sorted(layer_ids)
    out = []
    named: list[tuple[tuple, Any]] = []
    if isinstance(targets.get("layers"), list):
        named += [(("targets", "layers", k), v) for k, v in enumerate(targets["layers"])]
    if isinstance(targets.get("member_layers"), list):
        named += [(("targets", "member_layers", k, "layer"), item.get("layer"))
                  for k, item in enumerate(targets["member_layers"]) if isinstance(item, Mapping)]
    for loc, layer in named:
        if isinstance(layer, str) and layer not in layer_ids:
            out.append(Problem(path, line_of(root, loc), (
                f"{format_loc(loc)}: {layer!r} is not a layer of the layer rules{_suggest(layer, known)} "
                f"(layers: {', '.join(known)}); no group is in it, so this matches nothing"), WARNING))
    return out


def check_template(item: LoadedTemplate, *, quiet_hours: tuple[str, str] | None = DEFAULT_QUIET_HOURS,
                   layer_ids: Collection[str] | None = None) -> list[Problem]:
    """Lint checks for one validated template (template fields, rendering with sample values,
    timing, WeCom page paths, store fields for groups without a store, layers the layer rules
    don't define when ``layer_ids`` is given)."""
    template, path, root = item.template, item.path, item.root
    steps = [step.model_dump() for step in template.steps]
    problems: list[Problem] = []
    for i, step in enumerate(template.steps):
        source_errors = check_step_sources(step, i)
        problems.extend(_render_problem(path, root, exc) for exc in source_errors)
        if not source_errors:
            for day in sample_days(template):
                try:
                    render_step(template, i, sample_context(template, step_index=i, day=day))
                except TemplateRenderError as exc:
                    problems.append(_render_problem(path, root, exc))
                    break
    problems.extend(_step_problems(path, root, steps, quiet_hours))
    problems.extend(_store_warning(path, root, template.targets.model_dump(), steps))
    problems.extend(_layer_warnings(path, root, template.targets.model_dump(), layer_ids))
    return problems


def check_raw(path: str, root: Node, data: Any, *, quiet_hours: tuple[str, str] | None = DEFAULT_QUIET_HOURS,
              layer_ids: Collection[str] | None = None) -> list[Problem]:
    """Lint checks for a file that failed validation, on whatever of its steps can be read, so a
    schema error doesn't hide the other problems until the next run (rendering needs a valid
    template and waits)."""
    steps = _raw_steps(data)
    targets = data.get("targets") if isinstance(data, Mapping) else None
    return (_source_problems(path, root, steps) + _step_problems(path, root, steps, quiet_hours)
            + _store_warning(path, root, targets, steps) + _layer_warnings(path, root, targets, layer_ids))


def lint(path: str | Path, *, quiet_hours: tuple[str, str] | None = DEFAULT_QUIET_HOURS,
         layer_ids: Collection[str] | None = None) -> tuple[list[SopTemplate], list[Problem]]:
    """Load and check every template in ``path``: the entry point of ``scrm sop lint``.

    ``quiet_hours`` is (start, end) as HH:MM (from sop.quiet_hours_start/_end), None to skip
    that check. ``layer_ids`` are the layers the layer rules define
    (:func:`scrm.layers.lint.defined_layer_ids`); targets naming others get a warning; None skips it.
    Returns the templates that validated (see load_templates) and all problems,
    errors and warnings, sorted by file and line. Callers that act on templates refuse only on
    errors (:func:`errors_in`): a warning never stops a template."""
    loaded, problems, parsed = _load(path)
    for file in parsed:
        if file.template is not None:
            problems.extend(check_template(LoadedTemplate(file.template, file.path, file.root),
                                           quiet_hours=quiet_hours, layer_ids=layer_ids))
        else:
            problems.extend(check_raw(file.path, file.root, file.data, quiet_hours=quiet_hours,
                                      layer_ids=layer_ids))
    problems.sort(key=lambda p: (p.path, p.line or 0))
    return [item.template for item in loaded], problems


__all__ = [
    "DEFAULT_QUIET_HOURS", "ERROR", "WARNING", "LoadedTemplate", "Problem", "check_raw", "check_template", "errors_in",
    "line_of", "lint", "load_templates", "template_files",
]

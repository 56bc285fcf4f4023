"""A folder of operator-written YAML rule files read as one document, every problem at its
``file:line``: what the layer rules (``layers/``) and the CRM rules (``crm/``) share.

Each top-level key lives in exactly one file (an order spread over files would be a precedence
nobody wrote down); pydantic errors become problems at the line of the value they name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, ScalarNode

from scrm.sop.lint import (
    ERROR,
    WARNING,
    Problem,
    _duplicate_keys,
    _Loader,
    _models_in,
    _yaml_error,
    line_of,
    template_files,
)
from scrm.sop.render import format_loc


@dataclass
class Source:
    path: str
    root: MappingNode
    key_lines: dict[str, int]


@dataclass
class RulesFolder:
    name: str  # what a problem with no file names (the folder's usual name)
    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Source] = field(default_factory=dict)  # top-level key -> its file
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def at(self, loc: tuple, message: str, severity: str = ERROR) -> Problem:
        """A problem at ``loc`` (a path into the merged data) in the file holding ``loc[0]``."""
        src = self.origin.get(str(loc[0])) if loc else None
        if src is None:
            where = next(iter(self.origin.values()), None)
            return Problem(where.path if where else (self.files[0] if self.files else self.name), None, message,
                           severity)
        return Problem(src.path, line_of(src.root, loc), message, severity)

    def add(self, loc: tuple, message: str, severity: str = ERROR) -> None:
        self.problems.append(self.at(loc, message, severity))


def read_rules_folder(rules_dir: str | Path, top_keys: Iterable[str], *, name: str,
                      duplicate_note: str = "") -> RulesFolder:
    """Every ``*.yaml`` / ``*.yml`` in ``rules_dir`` merged by top-level key; unreadable files, YAML
    errors, duplicate keys and a key given in two files are problems (the rest is still read)."""
    folder = RulesFolder(name)
    keys = tuple(top_keys)
    base = Path(rules_dir)
    if not base.exists():
        folder.problems.append(Problem(str(base), None, "no such file or directory"))
        return folder
    files = template_files(base)
    if not files:
        folder.problems.append(Problem(str(base), None, "no rule files (*.yaml) here"))
        return folder
    for file in files:
        path = str(file)
        folder.files.append(path)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            folder.problems.append(Problem(path, None, f"cannot read the file: {exc}"))
            continue
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                folder.problems.append(Problem(path, None, "the file is empty; it is ignored", WARNING))
                continue
            folder.problems.extend(_duplicate_keys(path, root))
            data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            folder.problems.append(_yaml_error(path, text, exc))
            continue
        except (ValueError, TypeError) as exc:
            folder.problems.append(Problem(path, None, f"cannot read a value: {exc}"))
            continue
        finally:
            loader.dispose()
        if not isinstance(root, MappingNode) or not isinstance(data, dict):
            folder.problems.append(Problem(path, root.start_mark.line + 1, "the top level must be a mapping of keys "
                                           f"({', '.join(keys)})"))
            continue
        src = Source(path, root, {})
        for key_node, _ in root.value:
            if isinstance(key_node, ScalarNode):
                src.key_lines.setdefault(key_node.value, key_node.start_mark.line + 1)
        for key, value in data.items():
            key = str(key)
            if key in folder.origin:
                first = folder.origin[key]
                folder.problems.append(Problem(
                    path, src.key_lines.get(key),
                    f"{key!r} is already given in {first.path} (line {first.key_lines.get(key)}); each top-level "
                    f"key lives in one file{duplicate_note}"))
                continue
            folder.origin[key] = src
            folder.data[key] = value
    return folder


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def keys_at(model: type[BaseModel], loc: Iterable[str | int]) -> list[str]:
    """The keys allowed in the mapping at ``loc`` below ``model``, to suggest one for a typo."""
    models: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        found = [f for m in models for name, f in m.model_fields.items() if (f.alias or name) == part]
        if not found:
            return []
        models = _models_in(found[0].annotation)
    return sorted({(f.alias or name) for m in models for name, f in m.model_fields.items()})


def validation_problems(folder: RulesFolder, exc: ValidationError, prefix: tuple, model: type[BaseModel]
                        ) -> list[Problem]:
    """One problem per pydantic error of ``model`` validated at ``prefix`` of the merged data."""
    out = []
    for err in exc.errors():
        own = tuple(err["loc"])
        loc = prefix + own
        kind, msg, value = err["type"], err["msg"].removeprefix("Value error, "), err.get("input")
        where, label = loc, format_loc(loc)
        if kind == "extra_forbidden":
            label = format_loc(loc[:-1])
            what = f"unknown key {loc[-1]!r}{suggest(str(loc[-1]), keys_at(model, own[:-1]))}"
        elif kind == "missing":
            where = loc[:-1]
            label = format_loc(where)
            what = f"missing required key {loc[-1]!r}"
        elif kind == "string_pattern_mismatch" and loc[-1] == "id":
            what = (f"{short(value)} is not a valid id: lowercase letters, digits, '-' and '_', starting with a "
                    "letter or digit, at most 32 characters")
        elif kind == "literal_error":
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            what = f"{msg} (got {short(value)}){suggest(str(value), allowed)}"
        elif kind == "value_error" or not isinstance(value, (str, int, float, bool, type(None))):
            what = msg
        else:
            what = f"{msg} (got {short(value)})"
        out.append(folder.at(where, f"{label}: {what}" if label else what))
    return out

"""The sandbox corp on disk: one JSON file, so a restarted ``scrm run`` finds the same corp (same
ids, QR configs, groups…) instead of seeding a new one that scrm would sync in twice.

Saved: what describes the corp (members, customers, follow relations, groups with members and
versions, tag groups and tags, contact ways, join ways, mass-send templates with their tasks and
results, mass_received, group robots, the welcome/app/robot message logs, and what the demo seed
built). Not saved: tokens, rate counters, injected faults, OAuth codes, JS-SDK tickets, welcome
codes (all short-lived or test knobs).

    load_or_seed(sandbox, data_dir / "sandbox-corp.json")   # or Sandbox.from_settings(s, state_file=…)
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scrm.config import ConfigError
from scrm.sandbox.state import (
    ContactWay,
    CorpState,
    Customer,
    Follow,
    Group,
    GroupMember,
    JoinWay,
    Member,
    MsgTemplate,
    Tag,
    TagGroup,
)

FORMAT = "scrm-sandbox-corp"
VERSION = 1


class SandboxStateError(ConfigError):
    """The sandbox corp file cannot be used (unreadable, not JSON, not a corp, another corp)."""


def corp_to_dict(state: CorpState) -> dict[str, Any]:
    """The corp as JSON-able data (fresh copies: safe to serialise after the lock is released)."""
    with state.lock:
        return {
            "format": FORMAT,
            "version": VERSION,
            "corp_id": state.corp_id,
            "saved_at": state.now(),
            "members": [asdict(m) for m in state.members.values()],
            "customers": [asdict(c) for c in state.customers.values()],
            "follows": [asdict(f) for f in state.follows.values()],
            "groups": [asdict(g) for g in state.groups.values()],
            "tag_groups": [asdict(g) for g in state.tag_groups.values()],
            "tags": [asdict(t) for t in state.tags.values()],
            "contact_ways": [asdict(w) for w in state.contact_ways.values()],
            "join_ways": [asdict(w) for w in state.join_ways.values()],
            "templates": [asdict(t) for t in state.templates.values()],
            "mass_received": [[day, target, n] for (day, target), n in state.mass_received.items()],
            "group_robots": dict(state.group_robots),
            "welcome_messages": json.loads(json.dumps(state.welcome_messages)),
            "app_messages": json.loads(json.dumps(state.app_messages)),
            "robot_messages": json.loads(json.dumps(state.robot_messages)),
            "demo": json.loads(json.dumps(state.demo)) if state.demo is not None else None,
        }


def restore_corp(state: CorpState, data: Any, source: Path | str = "<data>") -> None:
    """Replace ``state``'s corp with ``data`` (from ``corp_to_dict``). Raises ``SandboxStateError``
    naming ``source`` when the data is not a corp file of this version for this corp id; the
    sandbox is left untouched then."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SandboxStateError(f"{source} is not a scrm sandbox corp file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise SandboxStateError(f"{source} is a sandbox corp file of version {data.get('version')!r}; "
                                f"this scrm reads version {VERSION}")
    if data.get("corp_id") != state.corp_id:
        raise SandboxStateError(f"{source} holds corp {data.get('corp_id')!r} but the sandbox is configured as "
                                f"{state.corp_id!r} (wecom.corp_id); use that corp id or move the file away")
    try:
        members = {m.userid: m for m in (Member(**d) for d in data["members"])}
        customers = {c.external_userid: c for c in (Customer(**d) for d in data["customers"])}
        follows = {(f.userid, f.external_userid): f for f in (Follow(**d) for d in data["follows"])}
        groups = {}
        for d in data["groups"]:
            g = Group(**{**d, "members": [GroupMember(**m) for m in d["members"]]})
            groups[g.chat_id] = g
        tag_groups = {g.group_id: g for g in (TagGroup(**d) for d in data["tag_groups"])}
        tags = {t.id: t for t in (Tag(**d) for d in data["tags"])}
        contact_ways = {w.config_id: w for w in (ContactWay(**d) for d in data["contact_ways"])}
        join_ways = {w.config_id: w for w in (JoinWay(**d) for d in data["join_ways"])}
        templates = {t.msgid: t for t in (MsgTemplate(**d) for d in data["templates"])}
        mass_received = {(str(day), str(target)): int(n) for day, target, n in data["mass_received"]}
        group_robots = {str(k): str(v) for k, v in dict(data["group_robots"]).items()}
        logs = {key: list(data[key]) for key in ("welcome_messages", "app_messages", "robot_messages")}
        demo = data.get("demo")
        for tag in tags.values():
            if tag.group_id not in tag_groups:
                raise ValueError(f"tag {tag.id} is in unknown tag group {tag.group_id}")
        for key in follows:
            if key[0] not in members or key[1] not in customers:
                raise ValueError(f"follow {key} names an unknown member or customer")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SandboxStateError(f"{source} is not a usable sandbox corp file: {type(exc).__name__}: {exc}") from None
    with state.lock:
        state.members, state.customers, state.follows, state.groups = members, customers, follows, groups
        state.tag_groups, state.tags = tag_groups, tags
        state.contact_ways, state.join_ways, state.templates = contact_ways, join_ways, templates
        state.mass_received, state.group_robots = mass_received, group_robots
        state.welcome_messages = logs["welcome_messages"]
        state.app_messages = logs["app_messages"]
        state.robot_messages = logs["robot_messages"]
        state.demo = demo
        state._dirty = False


def read_corp_file(path: Path | str) -> dict:
    """The parsed file; ``SandboxStateError`` naming the file when it cannot be read as JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SandboxStateError(f"the sandbox corp file {path} is not UTF-8 text ({exc.reason} at byte "
                                f"{exc.start}); fix it or move it away to start a new demo corp") from None
    except OSError as exc:
        raise SandboxStateError(f"cannot read the sandbox corp file {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SandboxStateError(f"the sandbox corp file {path} is not valid JSON{where}; fix it or move it away "
                                f"to start a new demo corp (it is never reseeded over)") from None


def write_json_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader
    (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_corp(state: CorpState, path: Path | str) -> None:
    """Load the corp saved at ``path`` into ``state`` (``SandboxStateError`` if unusable)."""
    restore_corp(state, read_corp_file(path), path)


def load_or_seed(sandbox, path: Path | str, *, seed: bool = True) -> dict | None:
    """Make ``sandbox`` durable at ``path``: load the corp from the file when it exists (an
    unusable file raises ``SandboxStateError`` naming it; it is never reseeded over), else seed
    the demo chain (when ``seed``) and save it. From then on every change is saved to ``path``.
    Returns ``sandbox.demo`` (what the seed built; None for an unseeded corp)."""
    from scrm.sandbox.seed import seed_demo

    path = Path(path)
    if path.exists():
        load_corp(sandbox, path)
        sandbox.persist_path = path
    else:
        sandbox.persist_path = path
        if seed:
            seed_demo(sandbox)
        sandbox.save()
    return sandbox.demo

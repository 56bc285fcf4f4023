"""Users, role grants, passwords and who a signed-in userid is (the :class:`Principal`).

Plain functions over the engine, shared by ``scrm users`` and the sign-in pages. Every function
checks all of its input before writing, so a refused call changes nothing. Errors are
:class:`AuthError` subclasses with a message a person can act on (the CLI prints it).

Passwords: argon2id through pwdlib; a userid without a local password (unknown, WeCom-only or
disabled) is checked against a dummy hash, so a wrong userid costs the same time as a wrong password
and timing does not tell which userids exist."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from scrm.auth.models import RoleGrant, User
from scrm.auth.roles import Principal, Role
from scrm.db import as_utc, utcnow
from scrm.logs import get_logger

log = get_logger(__name__)

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256  # argon2 takes any length; a cap keeps one request's hashing bounded
# WeCom's rule for a member's userid (1-64 bytes of letters, digits and _-@., starting with a letter or
# digit); local login names follow it too, so a local admin can later be the same person's WeCom id.
USERID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

_hasher = PasswordHash.recommended()  # argon2id with pwdlib's current parameters
_dummy: str | None = None
_dummy_lock = threading.Lock()


class AuthError(Exception):
    """A refused users/roles change; the message says what to do."""


class UnknownUser(AuthError):
    pass


class UserExists(AuthError):
    pass


class InvalidGrant(AuthError):
    """An unknown role, store_staff without a store, a store for another role, an unknown store."""


class WeakPassword(AuthError):
    pass


class NotSandbox(AuthError):
    pass


@dataclass(frozen=True)
class UserRow:
    """A user as ``scrm users list`` shows it."""

    userid: str
    name: str
    local: bool  # has a local password
    disabled: bool
    grants: tuple[tuple[Role | str, str], ...]  # (role, store code or '')
    created_at: datetime
    last_sign_in_at: datetime | None


@dataclass(frozen=True)
class Granted:
    created_user: bool  # the userid was new: a WeCom member granted before their first sign-in
    added: tuple[tuple[Role, str], ...]  # grants that were not there before
    known_member: bool  # the userid is a synced WeCom member (employees table)


# -- validation --------------------------------------------------------------------------------
def parse_role(name: str) -> Role:
    try:
        return Role(name.strip().lower())
    except ValueError:
        raise InvalidGrant(f"unknown role {name!r}: use one of {', '.join(r.value for r in Role)}") from None


def check_userid(userid: str) -> str:
    if not USERID.fullmatch(userid or ""):
        raise AuthError(f"userid {userid!r} must be 1-64 letters, digits or _ - @ . starting with a letter "
                        "or digit (WeCom's rule for a userid)")
    return userid


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")
    return password


def _grant_rows(s: Session, role: Role, stores: Sequence[str]) -> list[tuple[Role, str]]:
    """(role, store) pairs for one grant/revoke, checked: store_staff needs existing stores, the
    other roles take none."""
    from scrm.stores.models import Store

    codes = list(dict.fromkeys(c.strip() for c in stores))
    if role is Role.store_staff:
        if not codes or "" in codes:
            raise InvalidGrant("store_staff needs the store: add --store CODE (repeat it for several stores)")
        known = set(s.exec(select(Store.code).where(col(Store.code).in_(codes))).all())
        missing = [c for c in codes if c not in known]
        if missing:
            raise InvalidGrant(f"unknown store code{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                               "`scrm stores list` shows the stores")
        return [(role, c) for c in codes]
    if codes:
        raise InvalidGrant(f"--store is only for store_staff: a {role.value} sees every store")
    return [(role, "")]


def _member_name(s: Session, userid: str) -> str | None:
    """The synced WeCom member's name, None when the userid is not a synced member."""
    from scrm.contacts.models import Employee

    emp = s.get(Employee, userid)
    return None if emp is None else emp.name


def _hash(password: str) -> str:
    return _hasher.hash(check_password(password))


# -- changes -----------------------------------------------------------------------------------
def add_user(engine: Engine, userid: str, *, name: str = "", password: str | None = None,
             role: Role | None = None, stores: Sequence[str] = ()) -> Granted:
    """A new user (a local admin when ``password`` is given), optionally with a first role."""
    check_userid(userid)
    password_hash = _hash(password) if password is not None else None
    if stores and role is None:
        raise InvalidGrant("--store goes with --role store_staff")
    with Session(engine) as s:
        if s.get(User, userid) is not None:
            raise UserExists(f"user {userid} already exists: `scrm users grant` adds roles, "
                             "`scrm users passwd` sets a password")
        rows = _grant_rows(s, role, stores) if role is not None else []
        member = _member_name(s, userid)
        s.add(User(userid=userid, name=name.strip() or member or "", password_hash=password_hash))
        s.flush()
        for r, code in rows:
            s.add(RoleGrant(userid=userid, role=r.value, store_code=code))
        try:
            s.commit()
        except IntegrityError:
            raise UserExists(f"user {userid} already exists") from None
    log.info("user_added", userid=userid, local=password_hash is not None, roles=[f"{r}:{c}" for r, c in rows])
    return Granted(created_user=True, added=tuple(rows), known_member=member is not None)


def grant(engine: Engine, userid: str, role: Role, stores: Sequence[str] = ()) -> Granted:
    """Give ``userid`` a role (store_staff: for each store). An unknown userid becomes a user (a
    WeCom member granted before they first sign in). Grants already held are kept, not doubled."""
    check_userid(userid)
    with Session(engine) as s:
        rows = _grant_rows(s, role, stores)
        member = _member_name(s, userid)
        created = s.get(User, userid) is None
        if created:
            s.add(User(userid=userid, name=member or ""))
            s.flush()
        held = {(g.role, g.store_code) for g in s.exec(select(RoleGrant).where(RoleGrant.userid == userid)).all()}
        added = [(r, c) for r, c in rows if (r.value, c) not in held]
        for r, c in added:
            s.add(RoleGrant(userid=userid, role=r.value, store_code=c))
        try:
            s.commit()
        except IntegrityError:  # a concurrent grant of the same: it is held either way
            s.rollback()
            return grant(engine, userid, role, stores)
    log.info("role_granted", userid=userid, role=role.value, stores=[c for _, c in added], created_user=created)
    return Granted(created_user=created, added=tuple(added), known_member=member is not None)


def revoke(engine: Engine, userid: str, role: Role, stores: Sequence[str] = ()) -> int:
    """Take a role away; store_staff without stores takes every store's grant. Answers how many
    grants went (0: the user did not have it)."""
    with Session(engine) as s:
        if s.get(User, userid) is None:
            raise UnknownUser(f"no user {userid!r} (`scrm users list` shows them)")
    if stores and role is not Role.store_staff:
        raise InvalidGrant(f"--store is only for store_staff: a {role.value} grant has no store")
    c = RoleGrant.__table__.c
    where = [c.userid == userid, c.role == role.value]
    if stores:
        where.append(c.store_code.in_([code.strip() for code in stores]))
    with engine.begin() as conn:
        gone = conn.execute(delete(RoleGrant.__table__).where(*where)).rowcount
    log.info("role_revoked", userid=userid, role=role.value, stores=list(stores), revoked=gone)
    return int(gone or 0)


def set_password(engine: Engine, userid: str, password: str | None) -> None:
    """Set (or with None remove) a user's local password."""
    password_hash = _hash(password) if password is not None else None
    with Session(engine) as s:
        user = s.get(User, userid)
        if user is None:
            raise UnknownUser(f"no user {userid!r} (`scrm users add` creates one)")
        user.password_hash = password_hash
        s.add(user)
        s.commit()
    log.info("user_password_set", userid=userid, removed=password is None)


def set_disabled(engine: Engine, userid: str, disabled: bool) -> None:
    """A disabled user keeps their grants but cannot sign in, and their open sessions stop working."""
    with Session(engine) as s:
        user = s.get(User, userid)
        if user is None:
            raise UnknownUser(f"no user {userid!r} (`scrm users list` shows them)")
        user.disabled = disabled
        s.add(user)
        s.commit()
    log.info("user_disabled" if disabled else "user_enabled", userid=userid)


def list_users(engine: Engine) -> list[UserRow]:
    with Session(engine) as s:
        users = s.exec(select(User).order_by(User.userid)).all()
        grants: dict[str, list[tuple[Role | str, str]]] = {}
        for g in s.exec(select(RoleGrant).order_by(RoleGrant.userid, RoleGrant.role, RoleGrant.store_code)).all():
            grants.setdefault(g.userid, []).append((_role_or_str(g.role), g.store_code))
        return [UserRow(userid=u.userid, name=u.name, local=u.password_hash is not None, disabled=u.disabled,
                        grants=tuple(grants.get(u.userid, ())), created_at=as_utc(u.created_at),
                        last_sign_in_at=as_utc(u.last_sign_in_at)) for u in users]


def _role_or_str(value: str) -> Role | str:
    try:
        return Role(value)
    except ValueError:
        return value


# -- signing in --------------------------------------------------------------------------------
def principal_for(engine: Engine, userid: str) -> Principal | None:
    """Who ``userid`` is for the pages: None when unknown, disabled or without any role."""
    with Session(engine) as s:
        user = s.get(User, userid)
        if user is None or user.disabled:
            return None
        roles: set[Role] = set()
        stores: set[str] = set()
        for g in s.exec(select(RoleGrant).where(RoleGrant.userid == userid)).all():
            role = _role_or_str(g.role)
            if not isinstance(role, Role):
                log.warning("unknown_role_grant_ignored", userid=userid, role=g.role)
                continue
            roles.add(role)
            if role is Role.store_staff:
                stores.add(g.store_code)
        if not roles:
            return None
        name = user.name or _member_name(s, userid) or userid
    return Principal(userid=userid, name=name, roles=frozenset(roles), stores=frozenset(stores))


def user_status(engine: Engine, userid: str) -> str:
    """Why ``principal_for`` said None, for the page a refused WeCom member sees: 'unknown',
    'disabled' or 'no_roles' ('ok' when it would not)."""
    with Session(engine) as s:
        user = s.get(User, userid)
        if user is None:
            return "unknown"
        if user.disabled:
            return "disabled"
        has_role = s.exec(select(RoleGrant.id).where(RoleGrant.userid == userid)).first() is not None
    return "ok" if has_role else "no_roles"


def _dummy_hash() -> str:
    global _dummy
    with _dummy_lock:
        if _dummy is None:
            _dummy = _hasher.hash(secrets.token_urlsafe(16))
        return _dummy


def verify_password(engine: Engine, userid: str, password: str) -> bool:
    """True only for an enabled user whose local password this is. Every other case hashes too
    (against a dummy), so the answer takes the same time whether or not the userid exists."""
    with Session(engine) as s:
        user = s.get(User, userid)
        stored = user.password_hash if user is not None and not user.disabled else None
    if len(password) > MAX_PASSWORD_LENGTH:
        password, stored = "", None
    try:
        ok, new_hash = _hasher.verify_and_update(password, stored or _dummy_hash())
    except UnknownHashError:
        log.error("password_hash_unreadable", userid=userid)
        return False
    if stored is None:
        return False
    if ok and new_hash is not None:  # pwdlib's parameters moved on: keep the stronger hash
        c = User.__table__.c
        with engine.begin() as conn:  # unless it changed meanwhile (a new password is kept)
            conn.execute(update(User.__table__).where(c.userid == userid, c.password_hash == stored)
                         .values(password_hash=new_hash))
    return bool(ok)


def record_sign_in(engine: Engine, userid: str, at: datetime | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(update(User.__table__).where(User.__table__.c.userid == userid)
                     .values(last_sign_in_at=at or utcnow()))


# -- the sandbox demo ----------------------------------------------------------------------------
def demo_grants(demo: dict) -> list[tuple[str, Role, str | None]]:
    """What the demo corp's members may see: its operator (``admin``) is a manager, and the first
    member of each store (the owner of its groups) is that store's clerk."""
    out: list[tuple[str, Role, str | None]] = [(demo["admin"], Role.manager, None)]
    for store in demo["stores"]:
        out.append((store["staff"][0], Role.store_staff, store["code"]))
    return out


def grant_demo_roles(engine: Engine, demo: dict, *, corp_id: str) -> list[tuple[str, Role, str]]:
    """Grant the sandbox demo's members their roles (see :func:`demo_grants`), so ``scrm run``
    leaves a usable dashboard; idempotent. Refused for any corp but the sandbox's: a real corp's
    grants are given by a person with ``scrm users grant``. Answers the grants that were new."""
    from scrm.config import SANDBOX_CORP_ID

    if corp_id != SANDBOX_CORP_ID:
        raise NotSandbox(f"demo roles are for the sandbox corp {SANDBOX_CORP_ID} only, not {corp_id}")
    new: list[tuple[str, Role, str]] = []
    for userid, role, store in demo_grants(demo):
        out = grant(engine, userid, role, [store] if store else [])
        new.extend((userid, r, c) for r, c in out.added)
    return new


def roles_text(grants: Iterable[tuple[Role | str, str]]) -> str:
    """'manager, store_staff@BJ001' for the CLI."""
    return ", ".join(f"{r}@{c}" if c else str(r) for r, c in grants) or "-"

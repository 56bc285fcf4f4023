"""``scrm users``: who may sign in to the pages and what they see (registered in scrm/cli.py).

The commands only parse and print; checks and changes are in :mod:`scrm.auth.service`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail

users_app = typer.Typer(help="Users of the dashboard pages, their roles and local passwords.", no_args_is_help=True)

ROLE_HELP = "manager, operator, store_staff (with --store) or sales_rep"
STORE_HELP = "the store of a store_staff grant (repeat for several stores)"


def _role(name: str):
    from scrm.auth.service import AuthError, parse_role

    try:
        return parse_role(name)
    except AuthError as exc:
        fail(_console(), str(exc))


def _password(password: str | None, ask: bool) -> str | None:
    if password is not None and ask:
        fail(_console(), "give either --password or --ask-password, not both")
    if ask:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    return password


def _grants_text(added) -> str:
    from scrm.auth.service import roles_text

    return roles_text(added)


@users_app.command("add")
def add(
    userid: str = typer.Argument(..., help="the WeCom userid, or a local login name"),
    name: str = typer.Option("", help="display name (default: the synced WeCom member's name)"),
    password: str | None = typer.Option(None, help="local password (visible in shell history: prefer --ask-password)"),
    ask_password: bool = typer.Option(False, "--ask-password", help="prompt for the local password"),
    role: str | None = typer.Option(None, help=ROLE_HELP),
    store: list[str] = typer.Option([], help=STORE_HELP),
) -> None:
    """Add a user: a WeCom member, or with a password a local admin for before WeCom is set up."""
    from scrm.auth.service import AuthError, add_user

    console = _console()
    parsed = _role(role) if role is not None else None
    secret = _password(password, ask_password)
    with database(console) as engine:
        try:
            out = add_user(engine, userid, name=name, password=secret, role=parsed, stores=store)
        except AuthError as exc:
            fail(console, str(exc))
    kind = "local user" if secret is not None else "user"
    console.print(escape(f"added {kind} {userid}: {_grants_text(out.added)}"))
    if not out.added:
        console.print(escape(f"no role yet: `scrm users grant {userid} ROLE` lets them see pages"))


@users_app.command("grant")
def grant(
    userid: str = typer.Argument(...),
    role: str = typer.Argument(..., help=ROLE_HELP),
    store: list[str] = typer.Option([], help=STORE_HELP),
) -> None:
    """Give a user a role (a userid not yet known becomes a user, for a WeCom member's first sign-in)."""
    from scrm.auth.service import AuthError
    from scrm.auth.service import grant as grant_role

    console = _console()
    parsed = _role(role)
    with database(console) as engine:
        try:
            out = grant_role(engine, userid, parsed, store)
        except AuthError as exc:
            fail(console, str(exc))
    if out.created_user:
        console.print(escape(f"new user {userid}"))
        if not out.known_member:
            console.print(escape(f"note: {userid} is not a synced WeCom member (check the spelling; "
                                 "`scrm sync` brings the members)"))
    if out.added:
        console.print(escape(f"granted {userid}: {_grants_text(out.added)}"))
    else:
        console.print(escape(f"{userid} already had that: nothing changed"))


@users_app.command("revoke")
def revoke(
    userid: str = typer.Argument(...),
    role: str = typer.Argument(..., help=ROLE_HELP),
    store: list[str] = typer.Option([], help="only these stores' store_staff grants (default: every store)"),
) -> None:
    """Take a role away; takes effect on the user's next page."""
    from scrm.auth.service import AuthError
    from scrm.auth.service import revoke as revoke_role

    console = _console()
    parsed = _role(role)
    with database(console) as engine:
        try:
            gone = revoke_role(engine, userid, parsed, store)
        except AuthError as exc:
            fail(console, str(exc))
    if gone:
        console.print(escape(f"revoked {gone} grant(s) of {parsed.value} from {userid}"))
    else:
        console.print(escape(f"{userid} had no such grant: nothing changed"))


@users_app.command("list")
def list_() -> None:
    """Every user with their roles, whether they have a local password, and their last sign-in."""
    from scrm.auth.service import list_users, roles_text

    console = _console()
    with database(console) as engine:
        rows = list_users(engine)
    if not rows:
        console.print("no users yet: `scrm users add USERID --ask-password --role manager` adds a first admin")
        return
    table = Table("userid", "name", "roles", "sign-in", "last sign-in")
    for r in rows:
        how = "disabled" if r.disabled else ("password + WeCom" if r.local else "WeCom")
        last = r.last_sign_in_at.strftime("%Y-%m-%d %H:%M UTC") if r.last_sign_in_at else "never"
        table.add_row(escape(r.userid), escape(r.name), escape(roles_text(r.grants)), how, last)
    console.print(table)


@users_app.command("passwd")
def passwd(
    userid: str = typer.Argument(...),
    remove: bool = typer.Option(False, "--remove", help="remove the local password (WeCom sign-in only)"),
) -> None:
    """Set (prompted) or remove a user's local password."""
    from scrm.auth.service import AuthError, set_password

    console = _console()
    secret = None if remove else typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with database(console) as engine:
        try:
            set_password(engine, userid, secret)
        except AuthError as exc:
            fail(console, str(exc))
    console.print(escape(f"{'removed the' if remove else 'set a'} local password of {userid}"))


@users_app.command("disable")
def disable(userid: str = typer.Argument(...)) -> None:
    """Stop a user signing in (their open sessions stop too); grants are kept for `enable`."""
    _set_disabled(userid, True)


@users_app.command("enable")
def enable(userid: str = typer.Argument(...)) -> None:
    """Let a disabled user sign in again."""
    _set_disabled(userid, False)


def _set_disabled(userid: str, disabled: bool) -> None:
    from scrm.auth.service import AuthError, set_disabled

    console = _console()
    with database(console) as engine:
        try:
            set_disabled(engine, userid, disabled)
        except AuthError as exc:
            fail(console, str(exc))
    console.print(escape(f"{'disabled' if disabled else 'enabled'} {userid}"))

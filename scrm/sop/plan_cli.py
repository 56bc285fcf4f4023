"""``scrm sop plan``: the dry-run plan, before anything is sent.

Uses the groups in the database and the day's ledger (posts already sent count against the
limits), exactly as the scheduler will, but writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from scrm.cli_common import fail as _fail
from scrm.config import get_settings
from scrm.sop.cli import sop_app


def _day(console, date: str | None, tz) -> dt.date:
    """--date as a date, today in the corp's time zone when not given."""
    from scrm.db import utcnow

    try:
        return dt.date.fromisoformat(date) if date else utcnow().astimezone(tz).date()
    except ValueError:
        _fail(console, f"--date {date!r} is not a date (YYYY-MM-DD)")

REASONS = {  # every drop reason of scrm.sop.planner, in words
    "daily_limit": "group's day full",
    "mass_send_quota": "mass-send quota",
    "spacing": "too close to another post",
    "quiet_hours": "quiet hours",
    "bot_over_capacity": "bot over capacity",
    "no_sender": "group has no owner",
    "no_store": "group has no store",
    "too_late": "time already passed",
    "ledger_full": "no free slot in the ledger (its rows hold the day's 3)",
    "ledger_mass_taken": "the ledger already holds the day's mass send",
}


@sop_app.command("plan")
def plan_command(
    date: str | None = typer.Option(None, "--date", help="First day, YYYY-MM-DD (default: today)"),
    days: int = typer.Option(1, "--days", min=1, max=31, help="How many days"),
    group: list[str] = typer.Option([], "--group", help="Show these groups' posts and drops (repeatable)"),
    show_all: bool = typer.Option(False, "--all", help="List every planned post (long for many groups)"),
    path: Path | None = typer.Option(None, "--path", help="Template folder (default: sop.templates_dir)"),
) -> None:
    """Which group gets which post from which bot at what time, and what was dropped and why."""
    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)  # per invocation: colour follows this stdout
    from sqlalchemy import select

    from scrm.db import get_engine, utcnow
    from scrm.groups.models import CustomerGroup
    from scrm.sop.lint import errors_in, lint
    from scrm.sop.planner import GroupIndex, Limits, plan_day
    from scrm.sop.service import fit_to_ledger, load_groups, local_now, read_day

    s = get_settings()
    tz = ZoneInfo(s.sop.timezone)
    first = _day(console, date, tz)
    folder = path or s.sop.templates_dir
    if not Path(folder).exists():
        _fail(console, f"{folder} does not exist")
    templates, problems = lint(folder, quiet_hours=(s.sop.quiet_hours_start, s.sop.quiet_hours_end))
    errors = errors_in(problems)
    if errors:  # warnings don't stop the scheduler, so they don't stop its dry run
        for problem in errors:
            console.print(str(problem), markup=False)
        _fail(console, f"{len(errors)} problem(s) in the templates; fix them first (scrm sop lint)")
    engine = get_engine(s.database_url())
    limits = Limits.from_settings(s.sop)
    now = utcnow()
    with engine.connect() as conn:
        # Members' layer shares cost a grouped query over every membership: only when a template targets them.
        groups = load_groups(conn, member_layers=any(t.targets.member_layers for t in templates))
        g = CustomerGroup.__table__.c
        names: dict[str, str] = {r.chat_id: r.name for r in conn.execute(select(g.chat_id, g.name))}
        if not groups:
            _fail(console, "no active customer groups in the database: run `scrm sync` first")
        unknown = [g for g in group if g not in names]
        if unknown:
            _fail(console, f"unknown chat id(s): {', '.join(unknown)}")
        index = GroupIndex(groups)
        for n in range(days):
            day = first + dt.timedelta(days=n)
            ledger = read_day(conn, day, now=now, tz=tz)
            plan = plan_day(day, templates, index, limits, fixed=ledger.fixed, explain=group,
                            now=local_now(now, tz))
            fit_to_ledger(plan, ledger, limits, tz=tz)  # what writing it would drop, as the scheduler does
            _print_day(console, plan, templates, names, ledger, group, show_all, len(groups))


def _print_day(console, plan, templates, names, ledger, chosen, show_all, n_groups) -> None:
    by_step: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for p in plan.posts:
        by_step[(p.template_id, p.step_key)]["planned"] += 1
    for (tid, key, reason), n in plan.dropped_counts.items():
        by_step[(tid, key)][reason] += n
    steps = {(t.id, t.step_key(i)): (t, t.steps[i]) for t in templates for i in range(len(t.steps))}
    kept = sum(len(v) for v in ledger.fixed.values())
    weekday = "一二三四五六日"[plan.day.weekday()]
    console.print(f"\n[bold]{plan.day} (周{weekday})[/bold]: {len(plan.posts)} posts planned for {n_groups} groups"
                  + (f", {kept} already in the ledger" if kept else ""))
    table = Table(show_lines=False)
    for col in ("template", "step", "time", "channel", "priority", "planned", "dropped (why)"):
        table.add_column(col, justify="right" if col in ("priority", "planned") else "left")
    for (tid, key), counts in sorted(by_step.items(), key=lambda kv: (steps[kv[0]][1].at, kv[0])):
        t, step = steps[(tid, key)]
        channel = step.channel.value if step.channel else get_settings().sop.default_channel
        drops = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in sorted(counts.items()) if r != "planned")
        table.add_row(escape(f"{tid} ({t.name})"), key, step.at, channel,
                      str(step.priority if step.priority is not None else t.priority),
                      str(counts.get("planned", 0)), escape(drops) or "-")
    if by_step:
        console.print(table)
    else:
        console.print("  no template runs on this day")
    bots = Table(title="sending accounts")
    for col in ("bot", "groups served", "posts", "not served (over capacity)"):
        bots.add_column(col)
    posts_per_bot = Counter(p.sender for p in plan.posts)
    for bot in sorted(plan.groups_per_bot):
        over = plan.over_capacity.get(bot, [])
        bots.add_row(escape(bot), str(plan.groups_per_bot[bot]), str(posts_per_bot.get(bot, 0)),
                     f"[red]{len(over)}[/red]" if over else "0")
    if len(plan.groups_per_bot) <= 50 or plan.over_capacity:
        console.print(bots)
    for bot, chats in plan.over_capacity.items():
        console.print(f"[red]warning:[/red] {escape(bot)} owns {plan.groups_per_bot[bot] + len(chats)} groups; "
                      f"{len(chats)} get no SOP posts until they move to another account")
    listing = [p for p in plan.posts if show_all or p.chat_id in chosen or (not chosen and n_groups <= 20)]
    if listing:
        posts = Table(title="posts")
        for col in ("time", "group", "template/step", "channel", "from"):
            posts.add_column(col)
        for p in sorted(listing, key=lambda p: (p.at, p.chat_id)):
            posts.add_row(p.at.strftime("%H:%M:%S"), escape(f"{names.get(p.chat_id, '')} {p.chat_id}"),
                          escape(f"{p.template_id}/{p.step_key}"), p.channel, escape(p.sender))
        console.print(posts)
    elif not chosen:
        console.print("  (use --group CHAT_ID to see one group's day, or --all for every post)")
    for d in plan.dropped:
        if chosen and d.chat_id not in chosen:
            continue
        console.print(f"  dropped: {d.chat_id} {d.template_id}/{d.step_key} {d.nominal.strftime('%H:%M')}: "
                      f"{REASONS.get(d.reason, d.reason)}", markup=False)


@sop_app.command("budget")
def budget_command(
    date: str | None = typer.Option(None, "--date", help="The day, YYYY-MM-DD (default: today)"),
    group: list[str] = typer.Option([], "--group", help="Only these groups (repeatable)"),
    limit: int = typer.Option(50, "--limit", min=0, help="Groups to list (0: all)"),
) -> None:
    """Per group and per sending account: what the day's ledger has planned, used and left, by channel."""
    from rich.console import Console

    from scrm.db import get_engine
    from scrm.sop.budget import day_budget
    from scrm.sop.planner import Limits

    console = Console(soft_wrap=True, highlight=False)
    s = get_settings()
    day = _day(console, date, ZoneInfo(s.sop.timezone))
    limits = Limits.from_settings(s.sop)
    budget = day_budget(get_engine(s.database_url()), day, limits, chat_ids=group)
    _print_budget(console, budget, limit)


def _channel_cell(counts) -> str:
    return ", ".join(f"{n} {label}" for label, n in sorted((counts or {}).items())) or "-"


def _problem(status, n: int) -> str:
    from scrm.sop.models import PostStatus

    if status == PostStatus.over_quota:
        return "[red]over WeCom's quota[/red]"
    if status == PostStatus.unconfirmed:
        return f"{n} unconfirmed (maybe sent)"
    return f"{n} {status}"


def _problems_cell(problems) -> str:
    return ", ".join(_problem(status, n) for status, n in problems.items()) or "-"


def _print_budget(console, budget, limit: int) -> None:
    max_posts, max_mass = budget.limits.max_posts_per_group_per_day, budget.limits.max_mass_sends_per_group_per_day
    console.print(f"[bold]{budget.day}[/bold]: {budget.posts} posts in the ledger for {len(budget.groups)} groups "
                  f"(limits: {max_posts} a group, {max_mass} mass send a group)")
    if not budget.groups:
        console.print("  nothing planned for this day (run `scrm sop plan` to see why, or let the scheduler plan it)")
        return
    table = Table()
    for col in ("group", "owner", "posts used/planned/left", "mass_send", "owner_task", "group_robot", "problems"):
        table.add_column(col)
    shown = budget.groups[:limit] if limit else budget.groups
    for g in shown:
        table.add_row(escape(f"{g.name} {g.chat_id}"), escape(g.owner), f"{g.used}/{g.open}/{g.left}",
                      f"{_channel_cell(g.channels.get('mass_send'))} (of {max_mass})",
                      _channel_cell(g.channels.get("owner_task")), _channel_cell(g.channels.get("group_robot")),
                      _problems_cell(g.problems))
    console.print(table)
    if limit and len(budget.groups) > limit:
        console.print(f"  … and {len(budget.groups) - limit} more groups (--limit 0 lists all, --group picks some)")
    accounts = Table(title="sending accounts")
    for col in ("account", "groups", "posts", "sent", "waiting", "failed/expired/over quota"):
        accounts.add_column(col)
    for acc in budget.accounts:
        flag = f" [red](over {budget.limits.max_groups_per_bot})[/red]" if acc.over_capacity else ""
        accounts.add_row(escape(acc.account), f"{acc.groups}{flag}", str(acc.posts), str(acc.sent),
                         str(acc.waiting), str(acc.bad))
    console.print(accounts)


@sop_app.command("robot")
def robot_command(
    chat_id: str = typer.Argument(..., help="The customer group"),
    webhook: str | None = typer.Option(None, "--webhook",
                                       help="The robot's webhook URL (…/webhook/send?key=KEY) or its key"),
    remove: bool = typer.Option(False, "--remove", help="Forget the group's robot"),
) -> None:
    """Give a group's group_robot steps a robot to post through (else the owner sends them)."""
    from urllib.parse import parse_qs, urlparse

    from rich.console import Console
    from sqlmodel import Session

    from scrm.db import get_engine
    from scrm.groups.models import CustomerGroup

    console = Console(soft_wrap=True, highlight=False)
    if remove == bool(webhook):
        _fail(console, "give --webhook URL_OR_KEY, or --remove")
    key = None
    if webhook:
        key = parse_qs(urlparse(webhook).query).get("key", [None])[0] if "://" in webhook else webhook.strip()
        if not key or not all(ch.isalnum() or ch in "-_" for ch in key) or len(key) > 128:
            _fail(console, "that is not a robot webhook URL or key (…/cgi-bin/webhook/send?key=KEY)")
    engine = get_engine(get_settings().database_url())
    with Session(engine) as s:
        group = s.get(CustomerGroup, chat_id)
        if group is None:
            _fail(console, f"unknown chat id {chat_id!r} (run `scrm sync` first?)")
        name = group.name or chat_id
        group.robot_webhook_key = key
        s.add(group)
        s.commit()
    shown = f"{key[:4]}…{key[-4:]}" if key else ""
    console.print(f"{escape(name)}: " + (f"robot set (key {shown})" if key else "robot removed"))

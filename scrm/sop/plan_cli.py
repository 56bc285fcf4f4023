"""``scrm sop plan``: the dry-run plan, before anything is sent.

Uses the groups in the database and the day's ledger (posts already sent count against the
limits), exactly as the scheduler will, but writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path
from typing import List, Optional
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from scrm.config import get_settings
from scrm.sop.cli import sop_app



def _fail(console, message: str):
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)

REASONS = {
    "daily_limit": "group's day full",
    "mass_send_quota": "mass-send quota",
    "spacing": "too close to another post",
    "quiet_hours": "quiet hours",
    "bot_over_capacity": "bot over capacity",
    "no_sender": "group has no owner",
}


@sop_app.command("plan")
def plan_command(
    date: Optional[str] = typer.Option(None, "--date", help="First day, YYYY-MM-DD (default: today)"),
    days: int = typer.Option(1, "--days", min=1, max=31, help="How many days"),
    group: List[str] = typer.Option([], "--group", help="Show these groups' posts and drops (repeatable)"),
    show_all: bool = typer.Option(False, "--all", help="List every planned post (long for many groups)"),
    path: Optional[Path] = typer.Option(None, "--path", help="Template folder (default: sop.templates_dir)"),
) -> None:
    """Which group gets which post from which bot at what time, and what was dropped and why."""
    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)  # per invocation: colour follows this stdout
    from sqlalchemy import select

    from scrm.db import get_engine, utcnow
    from scrm.groups.models import CustomerGroup
    from scrm.sop.lint import lint
    from scrm.sop.planner import GroupIndex, Limits, plan_day
    from scrm.sop.service import load_groups, read_day

    s = get_settings()
    tz = ZoneInfo(s.sop.timezone)
    try:
        first = dt.date.fromisoformat(date) if date else utcnow().astimezone(tz).date()
    except ValueError:
        _fail(console, f"--date {date!r} is not a date (YYYY-MM-DD)")
    folder = path or s.sop.templates_dir
    if not Path(folder).exists():
        _fail(console, f"{folder} does not exist")
    templates, problems = lint(folder, quiet_hours=(s.sop.quiet_hours_start, s.sop.quiet_hours_end))
    if problems:
        for problem in problems:
            console.print(str(problem), markup=False)
        _fail(console, f"{len(problems)} problem(s) in the templates; fix them first (scrm sop lint)")
    engine = get_engine(s.database_url())
    limits = Limits.from_settings(s.sop)
    now = utcnow()
    with engine.connect() as conn:
        groups = load_groups(conn)
        names = dict(conn.execute(select(CustomerGroup.chat_id, CustomerGroup.name)).all())
        if not groups:
            _fail(console, "no active customer groups in the database: run `scrm sync` first")
        unknown = [g for g in group if g not in names]
        if unknown:
            _fail(console, f"unknown chat id(s): {', '.join(unknown)}")
        index = GroupIndex(groups)
        for n in range(days):
            day = first + dt.timedelta(days=n)
            ledger = read_day(conn, day, now=now, tz=tz)
            plan = plan_day(day, templates, index, limits, fixed=ledger.fixed, explain=group)
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

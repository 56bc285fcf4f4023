"""What every CLI command group shares: its console, a one-line error with exit status 2, the
configured database engine with database errors turned into such a line (not a traceback), and
counted nouns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from scrm.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def console() -> Console:
    """A console for this invocation: made per command so colour is detected on the stdout in use
    (a terminal, a CI log, a test runner), and with soft wrap so a long problem stays one line
    that CI log parsers and editors can link as file:line:."""
    return Console(soft_wrap=True, highlight=False)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)


@contextmanager
def database(console: Console) -> Iterator[Engine]:
    """The configured engine; a database error inside the block becomes one line (exit 2)."""
    from sqlalchemy.exc import SQLAlchemyError

    from scrm.db import get_engine

    try:
        yield get_engine(get_settings().database_url())
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        missing = "no such table" in detail or "does not exist" in detail
        hint = " (run `scrm init` to create the schema?)" if missing else ""
        fail(console, f"database error: {detail}{hint}")


def report_lint(console: Console, problems: list, *, files: int, noun: str, strict: bool) -> NoReturn:
    """Print lint problems one per line (``file:line: message``), then the coloured summary, and
    exit: 1 on any error (or any warning with ``strict``). Shared by `scrm sop lint` and `scrm layers lint`."""
    from scrm.sop.lint import errors_in

    for problem in problems:
        console.print(str(problem), markup=False)
    errors = len(errors_in(problems))
    warnings = len(problems) - errors
    failed = errors or (strict and warnings)
    colour = "red" if failed else ("yellow" if warnings else "green")
    summary = f"{plural(files, noun)}, {plural(errors, 'problem')}"
    if warnings:
        summary += f", {plural(warnings, 'warning')}"
    console.print(f"[{colour}]{summary}[/{colour}]")
    raise typer.Exit(1 if failed else 0)

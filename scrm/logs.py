"""structlog set-up: key=value (or JSON) lines carrying the ids that matter, never secrets.

Services (`scrm serve`, `scrm worker`, `scrm scheduler`) log everything to stderr, where a process
manager collects it. `scrm run` is a person at a terminal: it logs everything to a file in the
data dir and echoes only warnings and errors, so the terminal shows what a person needs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog

_configured = False
_file_stream: TextIO | None = None
_QUIET_LIBRARIES = ("httpx", "httpcore", "apscheduler", "alembic")
_ECHOED = ("warning", "warn", "error", "err", "critical", "fatal", "exception", "failure")


class _TeeLogger:
    """A structlog logger writing every line to a file and warnings and worse to a stream too
    (structlog calls the method named after the level)."""

    def __init__(self, file: TextIO, echo: TextIO):
        self._file, self._echo = file, echo

    def _write(self, message: str, echo: bool) -> None:
        self._file.write(message + "\n")
        self._file.flush()
        if echo:
            self._echo.write(message + "\n")
            self._echo.flush()

    def __getattr__(self, level: str) -> Callable[[str], None]:
        echo = level in _ECHOED
        return lambda message: self._write(message, echo)


def configure_logging(level: str = "INFO", json: bool = False, *, file: Path | None = None) -> None:
    """``file``: log there and echo only warnings and worse to stderr (the `scrm run` console)."""
    global _configured, _file_stream
    numeric = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if file is None:
        logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
        logger_factory: Callable[..., Any] = structlog.PrintLoggerFactory(sys.stderr)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        stream = _file_stream = open(file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        to_file = logging.StreamHandler(stream)
        to_file.setLevel(numeric)
        to_console = logging.StreamHandler(sys.stderr)
        to_console.setLevel(logging.WARNING)
        root.setLevel(numeric)
        for handler in (to_file, to_console):
            handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
            root.addHandler(handler)
        def logger_factory(*args: object) -> _TeeLogger:
            return _TeeLogger(stream, sys.stderr)
    # httpx logs request URLs at INFO, and WeCom URLs carry access_token: never log them.
    # Alembic announces every plugin and migration at INFO: scrm reports the outcome itself.
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=_processors(json),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    _configured = True


def _processors(json: bool = False) -> list:
    renderer = structlog.processors.JSONRenderer() if json else structlog.processors.KeyValueRenderer(
        key_order=["event", "level"], drop_missing=True
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]


def file_logger():
    """A logger that writes only to the log file (a traceback the console shows as one line);
    without a log file, the usual logger."""
    if _file_stream is None:
        return structlog.get_logger("scrm")
    return structlog.wrap_logger(structlog.PrintLogger(_file_stream), processors=_processors())


def get_logger(name: str):
    return structlog.get_logger(name)

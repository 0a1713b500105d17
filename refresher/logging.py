"""structlog setup: one pipeline for every log line, ending in redaction, to stderr.

Every log line, whether it comes from structlog or from a stdlib logger (uvicorn, apscheduler, httpx,
alembic, apprise), goes through the same processors and ends in the same
:class:`~refresher.redaction.Redactor` (what it removes and how: :mod:`refresher.redaction`), rendered
as JSON lines or for humans. :func:`configure_logging` configures it once with the config's secrets.

Our own lines are rendered by structlog itself and written straight to stderr; only other libraries'
records go through stdlib ``logging`` (its ``ProcessorFormatter``). Through stdlib, each of our lines
cost a ``LogRecord``, a stack walk for the caller and a second processor pass: ~170 µs, a third of a
token read (benchmarks/RESULTS.md). Both writers share one lock, so lines never interleave.

uvicorn's access log is off unless ``logging.access_log`` is set; when it is on, its secret query values
are replaced before the line is formatted.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from refresher.config import LoggingSettings
from refresher.redaction import ACCESS_FILTER, Redactor, active_redactor, install_redactor

# ------------------------------------------------------------------------------------------- setup

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Chatty libraries: httpx logs every request URL at INFO (query strings may hold tokens; redaction
# catches them, but there is no reason to emit them at all), apprise logs its service URLs.
# APScheduler logs "Running job …" / "executed successfully" at INFO on every tick; the daemon's own sweep
# line says what matters, so its chatter starts at WARNING (missed and skipped runs still show).
_QUIET = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "apprise": logging.WARNING,
    "apscheduler": logging.WARNING,
}


# Held while a whole line is written and flushed, by our own lines and by the stdlib handler alike.
_WRITE_LOCK = threading.RLock()


class _StderrLogger:
    """structlog's logger for our own lines: each rendered line to whatever ``sys.stderr`` is now."""

    def __init__(self, name: str) -> None:
        self.name = name  # read by add_logger_name

    def msg(self, line: str) -> None:
        with _WRITE_LOCK:
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def __getattr__(self, method: str) -> Callable[[str], None]:
        # structlog calls the method named after the level (info, warning, error ...): each writes.
        if method in _METHOD_LEVELS:
            return self.msg
        raise AttributeError(method)


# The level of each method structlog may call on our logger.
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "log": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _LevelFilter:
    """Drops our own lines below the configured level (structlog's own filter_by_level needs stdlib)."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args else "")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each record (so a swapped stream is honoured)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def createLock(self) -> None:
        self.lock = _WRITE_LOCK

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Exceptions become text *before* redaction, so tracebacks are redacted like any string.
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]


def _drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates each message with ANSI colours in an extra field.
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(
    settings: LoggingSettings, secrets: Iterable[str] = (), *, redactor: Redactor | None = None
) -> Redactor:
    """Send every log line (structlog and stdlib) through redaction to stderr, as JSON lines or for humans.

    ``redactor`` (default: the one already installed) is given ``secrets`` and becomes the pipeline's
    last processor before rendering; it is returned. Safe to call again (a config reload): the previous
    handler is replaced, not stacked, and the access log follows ``settings.access_log`` again.
    """
    if redactor is not None:
        install_redactor(redactor)
    redactor = active_redactor()
    redactor.add(secrets)
    level = _LEVELS[settings.level]
    renderer: Processor
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    shared = _shared_processors()
    structlog.configure(
        # The level is a processor, not the wrapper class: ``structlog.testing.capture_logs`` swaps the
        # processors and must then see every level, whatever an earlier configuration chose.
        processors=[_LevelFilter(level), *shared, redactor, renderer],
        logger_factory=_logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        # Not cached: module-level loggers must follow a reload that changes level or format.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _drop_color_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            renderer,
        ],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    # (Not "sqlalchemy": it pins its own logger to WARNING on import, and inheriting INFO would log SQL.)
    for name in ("uvicorn", "uvicorn.error", "apscheduler", "alembic"):
        lib = logging.getLogger(name)
        # Their records reach the root handler (and only it): no second, unredacted copy.
        lib.handlers.clear()
        lib.propagate = True
        lib.setLevel(logging.NOTSET)
    _configure_access_log(settings.access_log)
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, level))
    return redactor


def _configure_access_log(enabled: bool) -> None:
    """uvicorn's access log writes every request target, query included: off unless asked for, and when
    asked for, with secret query values replaced. uvicorn decides per connection by ``hasHandlers()``, so
    a logger that neither propagates nor has handlers is silent even though uvicorn was told nothing."""
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.removeFilter(ACCESS_FILTER)
    if enabled:
        access.addFilter(ACCESS_FILTER)
        access.propagate = True
        access.setLevel(logging.NOTSET)
    else:
        access.propagate = False
        access.setLevel(logging.CRITICAL + 1)


def reset_logging() -> None:
    """Undo :func:`configure_logging` (tests, embedding): structlog defaults, our handler removed."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)

"""Structured logging for every service (structlog over the standard library).

Production logging must never stall a service: an exception is rendered as a plain traceback
(no local variables, bounded in length: milliseconds, however deep the stack or large its
locals). Rich tracebacks with local variables, which can take seconds per exception on the
event loop, are a developer's opt-in (``log_rich_tracebacks``). Records are written as they are
logged, so none is lost when a process ends by a signal.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import structlog

# Enough for a deep framework stack; a traceback longer than this keeps its head and its tail.
TRACEBACK_MAX_CHARS = 20_000
_TRUNCATION_MARK = "\n  ... [{omitted} characters omitted] ...\n"
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def bounded_traceback(exc_info: Any, max_chars: int = TRACEBACK_MAX_CHARS) -> str:
    """A plain traceback (no locals) of ``exc_info``, at most about ``max_chars`` long: the
    head (where it started) and the tail (where it failed, and the message) survive."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    tail = max_chars - head
    return text[:head] + _TRUNCATION_MARK.format(omitted=len(text) - head - tail) + text[-tail:]


class BoundedExceptionRenderer:
    """A processor that turns ``exc_info`` into an ``exception`` string field (kept by the JSON
    renderer; printed by the console renderer)."""

    def __init__(self, max_chars: int = TRACEBACK_MAX_CHARS):
        self.max_chars = max_chars

    def __call__(self, _logger: Any, _name: str, event_dict: dict) -> dict:
        exc_info = event_dict.pop("exc_info", None)
        if exc_info and exc_info != (None, None, None):
            rendered = bounded_traceback(exc_info, self.max_chars)
            if rendered != "NoneType: None":
                event_dict["exception"] = rendered
        return event_dict


def configure_logging(level: str = "INFO", json_logs: bool = False, *, rich_tracebacks: bool = False) -> None:
    """Route stdlib and structlog records through one renderer, to stderr.

    ``rich_tracebacks`` (development only) renders exceptions with rich, local variables included;
    otherwise tracebacks are plain and bounded."""
    shared_processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_logs:
        renderer: Any = structlog.processors.JSONRenderer()
    elif rich_tracebacks:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.RichTracebackFormatter())
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    # Rich console output renders exc_info itself (it needs the live frames); everything else
    # gets the bounded plain string, also the JSON logs.
    exception_processors = [] if (rich_tracebacks and not json_logs) else [BoundedExceptionRenderer()]
    structlog.configure(
        processors=[
            *shared_processors,
            *exception_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared_processors, *exception_processors],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    # Servers' own loggers (uvicorn logs every exception that escapes the app, and every request)
    # go through the same bounded rendering instead of their own handlers.
    # A logger without handlers (uvicorn's access log under --no-access-log) stays as it is.
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if server_logger.handlers:
            server_logger.handlers.clear()
            server_logger.propagate = True
    root = logging.getLogger()
    root.handlers[:] = [stream_handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)

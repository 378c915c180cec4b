"""Error logging stays bounded and plain by default (no local variables, off the event loop's
thread), JSON logs keep the traceback as a string field, and rich output is an explicit opt-in."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.logging import TRACEBACK_MAX_CHARS

# A deep stack whose frames hold a large local: what a rich traceback with locals would print.
SCRIPT = """
import logging, sys
from shared.logging import configure_logging, get_logger

configure_logging("INFO", json_logs={json_logs}, rich_tracebacks={rich})
DEPTH, MESSAGE_CHARS = {depth}, {message_chars}

def dive(depth):
    marker_local = ["marker-local-value"] * 2000
    if depth == 0:
        raise ValueError("y" * MESSAGE_CHARS + " boom at the bottom")
    return dive(depth - 1)

try:
    dive(DEPTH)
except ValueError:
    get_logger("probe").exception("unhandled_error", path="/v1/analyses")
try:
    dive(DEPTH)
except ValueError:
    logging.getLogger("uvicorn.probe").exception("foreign failure")
"""


def run_script(json_logs: bool, rich: bool = False, depth: int = 150, message_chars: int = 60_000) -> str:
    script = SCRIPT.format(json_logs=json_logs, rich=rich, depth=depth, message_chars=message_chars)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_console_tracebacks_are_plain_and_bounded_by_default():
    output = run_script(json_logs=False)
    assert "marker-local-value" not in output  # no locals
    assert output.count("boom at the bottom") >= 2  # the failing line of both records survives
    assert "unhandled_error" in output and "foreign failure" in output
    assert "characters omitted" in output  # the 60,000-character message is cut in the middle
    assert len(output) < 2 * (TRACEBACK_MAX_CHARS + 2000)


def test_json_logs_keep_the_bounded_traceback_as_a_field():
    lines = [json.loads(line) for line in run_script(json_logs=True).splitlines() if line.startswith("{")]
    events = {line["event"]: line for line in lines}
    for event in ("unhandled_error", "foreign failure"):
        exception = events[event]["exception"]
        assert exception.startswith("Traceback (most recent call last):")
        assert exception.rstrip().endswith("y boom at the bottom")
        assert len(exception) <= TRACEBACK_MAX_CHARS + 100
        assert "marker-local-value" not in exception
    assert events["unhandled_error"]["path"] == "/v1/analyses"


def test_rich_tracebacks_with_locals_are_a_developer_opt_in():
    output = run_script(json_logs=False, rich=True, depth=3, message_chars=10)
    assert "marker-local-value" in output


def test_uvicorn_exception_logs_take_the_same_bounded_path():
    """uvicorn logs every exception that escapes the app with its own handler; after
    configure_logging its records are rendered like ours (plain, bounded, JSON field)."""
    script = """
import logging, logging.config
from uvicorn.config import LOGGING_CONFIG
logging.config.dictConfig(LOGGING_CONFIG)  # what uvicorn does before it builds the app
from shared.logging import configure_logging
configure_logging("INFO", json_logs=True)
try:
    raise ValueError("y" * 60000 + " boom")
except ValueError as exc:
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and len(done.stderr) < TRACEBACK_MAX_CHARS + 2000
    assert lines[0]["logger"] == "uvicorn.error" and lines[0]["exception"].endswith("y boom")

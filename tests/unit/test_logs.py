"""Log lines: one JSON object a line with its fields, readable text, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from service.logs import LOGGERS, configure_logging, make_handler

Emit = tuple[io.StringIO, dict[str, logging.Logger]]
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.fixture
def emit() -> Iterator[Emit]:
    """Loggers named like the real ones, writing through make_handler into one buffer."""
    stream = io.StringIO()
    loggers: dict[str, logging.Logger] = {}
    saved = []
    for name in ("service.connection", "uvicorn.access", "uvicorn.error", "gunicorn.error"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers, logger.propagate, logger.level))
        loggers[name] = logger
    yield stream, loggers
    for logger, handlers, propagate, level in saved:
        logger.handlers, logger.propagate, logger.level = handlers, propagate, level


def _use(
    fmt: str, stream: io.StringIO, loggers: dict[str, logging.Logger]
) -> dict[str, logging.Logger]:
    for logger in loggers.values():
        logger.handlers = [make_handler(fmt, stream)]
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return loggers


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_connection_lines_carry_their_fields(emit: Emit) -> None:
    """A connection line is one JSON object with time, level, logger, pid and its extras."""
    stream, loggers = emit
    log = _use("json", stream, loggers)["service.connection"]
    log.info("connection opened", extra={"conn": "1a-1", "client": "10.0.0.7", "path": "/ws"})
    log.info(
        "connection closed",
        extra={"conn": "1a-1", "code": 1008, "reason": "slow consumer", "duration": 1.5},
    )
    opened, closed = _json_lines(stream)
    assert opened["message"] == "connection opened"
    assert opened["level"] == "info" and opened["logger"] == "service.connection"
    assert isinstance(opened["pid"], int) and opened["pid"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(opened["time"]))
    assert (opened["conn"], opened["client"], opened["path"]) == ("1a-1", "10.0.0.7", "/ws")
    assert (closed["code"], closed["reason"], closed["duration"]) == (1008, "slow consumer", 1.5)


def test_json_access_lines_have_client_method_path_status_without_secrets(emit: Emit) -> None:
    """uvicorn's access line becomes fields, and the token in its query string is cut."""
    stream, loggers = emit
    access = _use("json", stream, loggers)["uvicorn.access"]
    access.info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/healthz?token={TOKEN}", "1.1", 200
    )
    (entry,) = _json_lines(stream)
    assert TOKEN not in stream.getvalue()
    assert entry["client"] == "127.0.0.1:5000" and entry["method"] == "GET"
    assert entry["status"] == 200 and str(entry["path"]).startswith("/healthz?token=")


def test_json_websocket_handshake_lines_have_client_path_status(emit: Emit) -> None:
    """uvicorn's `"WebSocket /path" 401` line carries client, redacted path and status."""
    stream, loggers = emit
    error = _use("json", stream, loggers)["uvicorn.error"]
    error.info('%s - "WebSocket %s" %d', "127.0.0.1:6000", "/ws?api_key=hunter2hunter2", 401)
    (entry,) = _json_lines(stream)
    assert "hunter2hunter2" not in stream.getvalue()
    assert entry["client"] == "127.0.0.1:6000" and entry["status"] == 401
    assert entry["path"] == "/ws?api_key=[redacted]"


def test_json_extra_fields_are_redacted_too(emit: Emit) -> None:
    """A secret passed as a field (not in the message) is still cut."""
    stream, loggers = emit
    log = _use("json", stream, loggers)["service.connection"]
    log.info("handshake refused", extra={"path": f"/ws?token={TOKEN}", "detail": TOKEN})
    assert TOKEN not in stream.getvalue()
    (entry,) = _json_lines(stream)
    assert entry["path"] == "/ws?token=[redacted]"


def test_json_picks_fields_out_of_plain_messages(emit: Emit) -> None:
    """A line written without extras still yields its `conn=` and `code=` words as fields."""
    stream, loggers = emit
    log = _use("json", stream, loggers)["gunicorn.error"]
    log.warning("connection dropped conn=%s code=%d", "2b-9", 1011)
    (entry,) = _json_lines(stream)
    assert entry["conn"] == "2b-9" and entry["code"] == "1011" and entry["level"] == "warning"


def test_json_exceptions_are_one_line_with_a_redacted_traceback(emit: Emit) -> None:
    """A traceback is a field of the one JSON line, and its secrets are cut."""
    stream, loggers = emit
    log = _use("json", stream, loggers)["service.connection"]
    try:
        raise RuntimeError(f"failed with api_key=hunter2hunter2 and {TOKEN}")
    except RuntimeError:
        log.exception("connection failed", extra={"conn": "1a-2"})
    assert len(stream.getvalue().splitlines()) == 1
    (entry,) = _json_lines(stream)
    assert "RuntimeError" in str(entry["exception"]) and entry["conn"] == "1a-2"
    assert "hunter2hunter2" not in stream.getvalue() and TOKEN not in stream.getvalue()


def test_text_lines_append_fields_as_key_value(emit: Emit) -> None:
    """Text stays one readable line: the message, then key=value, quoted when needed."""
    stream, loggers = emit
    log = _use("text", stream, loggers)["service.connection"]
    log.info(
        "connection closed",
        extra={"conn": "1a-1", "code": 1008, "reason": "slow consumer", "duration": 0.25},
    )
    line = stream.getvalue().strip()
    assert "INFO" in line and "service.connection" in line
    assert line.endswith(
        'connection closed conn=1a-1 code=1008 reason="slow consumer" duration=0.250'
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorn_colour_copies_are_not_fields(emit: Emit, fmt: str) -> None:
    """uvicorn's `color_message` extra (ANSI escapes) never reaches a line."""
    stream, loggers = emit
    error = _use(fmt, stream, loggers)["uvicorn.error"]
    error.info("Started server process [%d]", 42, extra={"color_message": "\x1b[36m%d\x1b[0m"})
    assert "\x1b" not in stream.getvalue() and "color_message" not in stream.getvalue()
    assert "Started server process [42]" in stream.getvalue()


def test_configure_logging_sends_every_logger_through_one_handler() -> None:
    """The app's, uvicorn's and gunicorn's loggers all reach the root's single handler."""
    root = logging.getLogger()
    saved = (root.handlers, root.level)
    names = (*LOGGERS, "service.protocol")
    saved_loggers = {n: vars(logging.getLogger(n)).copy() for n in names}
    try:
        configure_logging(level="debug", fmt="json")
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        for name in LOGGERS:
            logger = logging.getLogger(name)
            assert logger.handlers == [] and logger.propagate, name
    finally:
        root.handlers, root.level = saved
        for name, state in saved_loggers.items():
            vars(logging.getLogger(name)).update(state)

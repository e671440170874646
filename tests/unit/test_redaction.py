"""Log redaction: no token, key or password survives into a log line, in any shape."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.logs import make_handler
from service.redaction import REDACTED, RedactingFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
KEY = "k3y-Vq8x0123456789abcdef"


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "WebSocket /ws?token={JWT}" [accepted]',
        f'127.0.0.1:5 - "WebSocket /ws/channels/a?x=1&token={JWT}&y=2" 403',
        f'"WebSocket /ws?%74oken={KEY}" 401',  # name percent-encoded
        f'"WebSocket /ws?TOKEN={KEY}"',
        f'"POST /api/channels/a/messages?api_key={KEY} HTTP/1.1" 202',
        f"path=/ws?api_key={KEY}&token={KEY}",
        f"Authorization: Bearer {KEY}",
        f"authorization: basic {KEY}",
        f"X-API-Key: {KEY}",
        f"headers=[(b'x-api-key', b'{KEY}'), (b'authorization', b'Bearer {KEY}')]",
        f"sec-websocket-protocol: bearer, {KEY}",
        f"broker redis://user:{KEY}@redis:6379/0 does not answer",
        f"rediss://:{KEY}@redis/0",
        f"unexpected token {JWT} in body",
        f"password={KEY} secret={KEY}",
    ],
)
def test_secrets_are_cut_from_every_shape_of_line(line: str) -> None:
    """Query strings (any case, encoded names), headers, URLs and bare JWTs are redacted."""
    cleaned = redact(line)
    assert KEY not in cleaned and JWT not in cleaned, cleaned
    assert REDACTED in cleaned


@pytest.mark.parametrize(
    "line",
    [
        "connection closed conn=1f-2 code=1008 reason='token expired' duration=2.0s",
        "handshake refused status=401 reason=unauthorized detail='invalid token: x' client=1.2.3.4",
        '127.0.0.1:5 - "GET /healthz HTTP/1.1" 200',
        "worker ready pid=12 broker=memory auth=api_key,jwt",
        "monkey=1 keyboard=2",
    ],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    """Lines with no secret in them come out unchanged."""
    assert redact(line) == line


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=200))
def test_redaction_is_idempotent(text: str) -> None:
    """Redacting twice changes nothing more (filter and record factory both run)."""
    once = redact(text)
    assert redact(once) == once


@settings(max_examples=200, deadline=None, database=None)
@given(
    secret=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="&#"),
        min_size=12,
        max_size=40,
    ),
    name=st.sampled_from(["token", "api_key", "TOKEN", "%74oken", "api%5Fkey"]),
)
def test_any_query_secret_is_removed(secret: str, name: str) -> None:
    """Whatever characters a query-string credential holds, it does not reach the line."""
    line = f'127.0.0.1:1 - "WebSocket /ws?a=1&{name}={secret}" [accepted]'
    cleaned = redact(line)
    assert f"={secret}" not in cleaned


def _log(fmt: str, msg: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.redaction.{fmt}")
    logger.handlers = [make_handler(fmt, stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if exc:
        try:
            raise ValueError(f"bad token={KEY}")
        except ValueError:
            logger.exception(msg, *args)
    else:
        logger.info(msg, *args)
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorn_websocket_line_is_redacted_in_every_format(fmt: str) -> None:
    """uvicorn's `"WebSocket %s" [accepted]` line, with the token in its args, comes out clean."""
    out = _log(fmt, '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/ws?token={JWT}")
    assert JWT not in out and "/ws?token=[redacted]" in out
    if fmt == "json":
        assert json.loads(out)["message"].endswith('"WebSocket /ws?token=[redacted]" [accepted]')


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_redacted(fmt: str) -> None:
    """An exception whose text holds a key is redacted in the logged traceback."""
    out = _log(fmt, "connection failed conn=%s", "1", exc=True)
    assert KEY not in out and "ValueError" in out


def test_records_are_redacted_when_made_whatever_the_handler() -> None:
    """A handler without our filter (gunicorn's own) still gets a redacted record."""
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction.foreign")
    logger.handlers = [logging.StreamHandler(stream)]  # no RedactingFilter here
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/ws?api_key={KEY}")
    assert KEY not in stream.getvalue()


def test_filter_keeps_tuple_args_for_formatters_that_unpack_them() -> None:
    """uvicorn's access formatter unpacks record.args: they stay a tuple, each one redacted."""
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/x?token={KEY}", "1.1", 200), None,
    )  # fmt: skip
    RedactingFilter().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert KEY not in record.getMessage()


def test_installing_the_record_factory_twice_does_not_stack() -> None:
    """A gunicorn reload re-imports the module: the factory is replaced, not wrapped again."""
    from service.redaction import install_record_factory

    before = logging.getLogRecordFactory()
    install_record_factory()
    after = logging.getLogRecordFactory()
    assert after is not before
    assert after.redaction_base is before.redaction_base  # type: ignore[attr-defined]

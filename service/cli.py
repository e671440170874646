"""`ws-service`: serve, check, token and client.

Exit codes: 0 fine; 1 a problem found (check), or the server closed with an error code or the
connection was lost (client); 2 bad configuration or usage; 3 the handshake was refused
(client); 4 the server could not be reached (client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .closecodes import CloseCode
from .errors import ConfigError
from .settings import Settings, load_settings, validated

EXIT_PROBLEM = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


def _settings_or_exit(*, check_problems: bool = True) -> Settings:
    try:
        settings = load_settings()
        return validated(settings) if check_problems else settings
    except ConfigError as exc:
        for line in exc.lines:
            print(f"ws-service: {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    file_problems = _file_problems(settings)  # a key or certificate that does not load
    if file_problems:
        for line in file_problems:
            print(f"ws-service: {line}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.workers > 1:
        # Several workers are gunicorn's job; the same config file ops use.
        argv = ["gunicorn", "-c", "python:service.gunicorn_conf", "service.app:app"]
        gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
        os.execv(gunicorn if os.path.exists(gunicorn) else sys.executable, argv)
    from .logs import configure_logging
    from .serve import serve

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    serve(settings)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Like `nginx -t`: the effective settings, every problem on its own line, the broker."""
    scrub = secret_scrubber(os.environ)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _report([], exc.lines, scrub)
    if not args.quiet:
        for name, value in settings.masked().items():
            shown = json.dumps(value) if value != value.strip() else value
            print(scrub(f"{name}={shown}"))
    problems = settings.problems() + _file_problems(settings)
    warnings = _warnings(settings)
    if not args.skip_broker:
        broker = asyncio.run(_check_broker(settings, seconds=args.timeout))
        if broker.startswith("WS_BROKER_URL:"):
            problems.append(broker)
        elif not args.quiet:
            print(scrub(broker))
    return _report(warnings, problems, scrub)


def _report(warnings: list[str], problems: list[str], scrub: Callable[[str], str]) -> int:
    for line in warnings:
        print(scrub(f"warning: {line}"), file=sys.stderr)
    for line in problems:
        print(scrub(f"error: {line}"), file=sys.stderr)
    if problems:
        print(f"configuration has {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_PROBLEM
    print("configuration ok")
    return 0


def _file_problems(settings: Settings) -> list[str]:
    """What only reading the files tells: a JWT key that does not load, a bad TLS pair."""
    from .auth import Authenticator

    found: list[str] = []
    if settings.jwt_public_key_file is not None:
        try:
            Authenticator(modes=(), jwt_public_key_file=settings.jwt_public_key_file)
        except ConfigError as exc:
            found.extend(exc.lines)
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        import ssl

        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            found.append(f"WS_SSL_CERTFILE, WS_SSL_KEYFILE: cannot load the pair: {exc}")
    return found


def _warnings(settings: Settings) -> list[str]:
    """Allowed, and worth a second look."""
    found: list[str] = []
    if not settings.auth_enabled and settings.env != "production":  # production: a problem
        found.append("WS_AUTH_MODE: none: any client may connect and publish")
    if not settings.ping_interval:
        found.append("WS_PING_INTERVAL: 0: dead peers are noticed only by TCP, after minutes")
    return found


async def _check_broker(settings: Settings, *, seconds: float) -> str:
    """A line saying the broker answers, or a problem line naming WS_BROKER_URL."""
    from .pubsub import broker_from_url
    from .settings import mask_url

    shown = mask_url(settings.broker_url)
    if settings.broker_is_memory:
        return f"broker {shown}: in-process, nothing to reach"
    started = time.monotonic()
    try:
        broker = broker_from_url(settings.broker_url, prefix=settings.redis_prefix)
        await asyncio.wait_for(broker.ping(), seconds)
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        return f"WS_BROKER_URL: {shown} does not answer: {detail}"
    return f"broker {shown}: answers in {(time.monotonic() - started) * 1000:.1f} ms"


def secret_scrubber(environ: Mapping[str, str]) -> Callable[[str], str]:
    """A function that cuts every configured secret out of a line.

    Belt and braces for `check`: the values come from the environment and the env file, so a
    secret is removed even from a problem line about a value that did not parse.
    """
    from urllib.parse import urlsplit

    from dotenv import dotenv_values

    from .redaction import redact

    sources = [dict(environ)]
    env_file = environ.get("WS_ENV_FILE") or ".env"
    if os.path.isfile(env_file):
        sources.append({k: v or "" for k, v in dotenv_values(env_file).items()})
    secrets: set[str] = set()
    for source in sources:
        secrets.add(source.get("WS_JWT_SECRET", ""))
        secrets.update(source.get("WS_API_KEYS", "").split(","))
        try:
            secrets.add(urlsplit(source.get("WS_BROKER_URL", "")).password or "")
        except ValueError:
            pass
    # Shorter values would cut ordinary words out of lines; masking hides them already.
    cut = sorted((s.strip() for s in secrets if len(s.strip()) >= 4), key=len, reverse=True)

    def scrub(line: str) -> str:
        for secret in cut:
            line = line.replace(secret, "****")
        return redact(line)

    return scrub


def cmd_token(args: argparse.Namespace) -> int:
    import jwt

    settings = _settings_or_exit(check_problems=False)
    secret = settings.jwt_secret.get_secret_value()
    if not secret:
        print("ws-service: WS_JWT_SECRET: empty, cannot sign a token", file=sys.stderr)
        return EXIT_CONFIG
    now = int(time.time())
    claims: dict[str, object] = {"sub": args.sub, "iat": now, "exp": now + args.ttl}
    if args.channels:
        claims["channels"] = [c.strip() for c in args.channels.split(",") if c.strip()]
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    """A wscat-like line client: stdin lines out, received messages printed one per line."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.sync.client import connect

    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            print(f"ws-service: --header {header!r}: expected 'Name: value'", file=sys.stderr)
            return EXIT_CONFIG
        headers[name.strip()] = value.strip()
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    if args.api_key:
        headers["X-API-Key"] = args.api_key
    try:
        ws = connect(
            args.url,
            additional_headers=headers,
            open_timeout=args.timeout,
            max_size=None,
            compression=None,
        )
    except InvalidURI as exc:
        print(f"ws-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        print(f"refused: HTTP {exc.response.status_code} {body}".rstrip(), file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        print(f"cannot connect: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE

    def printer() -> None:
        try:
            for message in ws:
                text = message if isinstance(message, str) else message.hex()
                print(text, flush=True)
        except ConnectionClosed:
            pass

    reader = threading.Thread(target=printer, daemon=True)
    reader.start()
    try:
        for line in sys.stdin:
            ws.send(line.rstrip("\r\n"))
        reader.join(args.wait)  # replies still on their way
        ws.close(CloseCode.NORMAL)
    except ConnectionClosed:
        pass  # the server closed first: its close frame says why
    except KeyboardInterrupt:
        ws.close(CloseCode.NORMAL)
    reader.join(args.timeout)
    return _closing_status(ws.protocol.close_rcvd, ws.protocol.close_sent)


def _closing_status(received: Any, sent: Any) -> int:
    """0 for a normal end; 1, with the code on stderr, when the server closed with an error."""
    if received is None:
        if sent is None:
            print("connection lost without a close frame", file=sys.stderr)
            return EXIT_PROBLEM
        return 0  # we closed and the peer went away without answering: our close stands
    code = received.code
    try:
        is_error = CloseCode(code).is_error
    except ValueError:  # a code we never send (1002, 1007, 4xxx...): not a normal end
        is_error = code != CloseCode.NORMAL
    if is_error:
        reason = f" {received.reason}" if received.reason else ""
        print(f"closed by server: {code}{reason}", file=sys.stderr)
        return EXIT_PROBLEM
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ws-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service as the environment configures it")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate the configuration and reach the broker")
    check.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    check.add_argument("--timeout", type=float, default=3.0, help="broker timeout, seconds")
    check.add_argument(
        "--skip-broker",
        action="store_true",
        help="do not contact the broker (for ExecStartPre: a Redis still booting is no error)",
    )
    check.set_defaults(func=cmd_check)

    token = sub.add_parser("token", help="print a JWT signed with WS_JWT_SECRET")
    token.add_argument("--sub", required=True, help="subject (user or service name)")
    token.add_argument("--channels", default="", help="comma-separated names or prefix.*")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)

    client = sub.add_parser("client", help="a line client for smoke tests, like wscat")
    client.add_argument("url", help="ws:// or wss:// URL")
    client.add_argument("--token", default="", help="JWT sent as Authorization: Bearer")
    client.add_argument("--api-key", default="", help="sent as X-API-Key")
    client.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    client.add_argument("--wait", type=float, default=1.0, help="seconds to wait at end of input")
    client.add_argument("--timeout", type=float, default=10.0, help="connect timeout, seconds")
    client.set_defaults(func=cmd_client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

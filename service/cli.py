"""`ws-service`: serve, check, token and client.

Exit codes: 0 fine; 1 a problem found (check) or the server closed with an error code
(client); 2 bad configuration or usage; 3 the handshake was refused (client).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Sequence

from .errors import ConfigError
from .settings import Settings, load_settings, validated

EXIT_PROBLEM = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3


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
    """Like `nginx -t`: every problem on its own line, the effective settings, the broker."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in exc.lines:
            print(f"error: {line}")
        print(f"configuration has {len(exc.lines)} problem(s)")
        return EXIT_PROBLEM
    problems = settings.problems()
    if not args.quiet:
        for name, value in settings.masked().items():
            print(f"{name}={value}")
    for line in problems:
        print(f"error: {line}")
    broker_problem = asyncio.run(_check_broker(settings, seconds=args.timeout))
    if broker_problem:
        print(f"error: WS_BROKER_URL: {broker_problem}")
        problems.append(broker_problem)
    if problems:
        print(f"configuration has {len(problems)} problem(s)")
        return EXIT_PROBLEM
    print("configuration ok")
    return 0


async def _check_broker(settings: Settings, *, seconds: float) -> str:
    from .pubsub import broker_from_url
    from .settings import mask_url

    broker = broker_from_url(settings.broker_url, prefix=settings.redis_prefix)
    try:
        await asyncio.wait_for(broker.ping(), seconds)
    except Exception as exc:
        return f"{mask_url(settings.broker_url)} does not answer: {type(exc).__name__}: {exc}"
    return ""


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
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
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
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        print(f"refused: HTTP {exc.response.status_code} {body}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, TimeoutError) as exc:
        print(f"cannot connect: {exc}", file=sys.stderr)
        return EXIT_CONFIG

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
            ws.send(line.rstrip("\n"))
        reader.join(args.wait)
        ws.close(1000)
    except ConnectionClosed:
        pass
    reader.join(args.timeout)
    received = ws.protocol.close_rcvd
    if received is not None and received.code not in (1000, 1001, 1012):
        print(f"closed by server: {received.code} {received.reason}", file=sys.stderr)
        return EXIT_PROBLEM
    if received is None and ws.protocol.close_sent is None:
        print("connection lost without a close frame", file=sys.stderr)
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

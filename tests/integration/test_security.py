"""Every attack of the threat model (docs/security.md) against a real server and real clients.

One test per attack; the last test scans the server's log for any token or key used above.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.auth import DEFAULT_LEEWAY
from tests.support import BIN, IN_CI, ServerProcess, base_env, free_port, scaled

SECRET = "it-secret-" + secrets.token_hex(24)
API_KEY = "it-key-" + secrets.token_hex(16)
AUDIENCE = "ws-clients"
ORIGIN = "https://app.example"
LIMIT = 1024
RATE, BURST = 20, 20

USED: list[str] = [SECRET, API_KEY]  # every credential sent: none may reach the log


def mint(
    sub: str = "alice", *, ttl: float = 600, exp: float | None = None, key: Any = SECRET,
    algorithm: str = "HS256", **claims: Any,
) -> str:  # fmt: skip
    body: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "iat": int(time.time())}
    body["exp"] = int(exp if exp is not None else time.time() + ttl)
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}  # aud=None: no aud
    token = jwt.encode(body, key, algorithm=algorithm)
    USED.append(token)
    return token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(claims: dict[str, Any], key: bytes, alg: str = "HS256") -> str:
    """A token 'signed' with arbitrary bytes as the HMAC key (PyJWT refuses PEM keys)."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(sig)}"
    USED.append(token)
    return token


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "jwt-public.pem"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, path


@pytest.fixture(scope="module")
def srv(rsa_key: tuple[rsa.RSAPrivateKey, Path]) -> Iterator[ServerProcess]:
    env = {
        "WS_AUTH_MODE": "api_key,jwt",
        "WS_JWT_SECRET": SECRET,
        "WS_JWT_PUBLIC_KEY_FILE": str(rsa_key[1]),
        "WS_API_KEYS": f"other-key-{secrets.token_hex(8)},{API_KEY}",
        "WS_JWT_AUDIENCE": AUDIENCE,
        "WS_ALLOWED_ORIGINS": ORIGIN,
        "WS_MAX_MESSAGE_BYTES": str(LIMIT),
        "WS_RATE_LIMIT": str(RATE),
        "WS_RATE_BURST": str(BURST),
        "WS_LOG_FORMAT": "json",
        "WS_LOG_LEVEL": "debug",
    }
    with ServerProcess(env) as proc:
        yield proc


async def refusal(url: str, **kwargs: Any) -> tuple[int, str]:
    """The HTTP status and body of a handshake the server must refuse."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=scaled(5), **kwargs):
            pass
    response = info.value.response
    return response.status_code, bytes(response.body or b"").decode()


async def echo_once(ws: ClientConnection, text: str = "ping") -> None:
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), scaled(5)) == f"Echo: {text}"


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server's close frame; its code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), scaled(10))
    assert info.value.rcvd is not None, "no close frame from the server"
    return info.value.rcvd.code, info.value.rcvd.reason


def call(
    srv: ServerProcess, method: str, path: str, body: Any = None,
    headers: dict[str, str] | None = None, chunked: bool = False,
) -> tuple[int, str]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=scaled(5))
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


# Credentials accepted, every way the contract offers.


async def test_valid_credentials_are_admitted_every_way(
    srv: ServerProcess, rsa_key: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    """Bearer header, ?token=, the bearer subprotocol, X-API-Key, ?api_key= and RS256 all work."""
    token = mint()
    rs256 = mint(key=rsa_key[0], algorithm="RS256")
    ways: list[tuple[str, dict[str, Any]]] = [
        ("/ws", {"additional_headers": {"Authorization": f"Bearer {token}"}}),
        (f"/ws?token={token}", {}),
        ("/ws", {"additional_headers": {"X-API-Key": API_KEY}}),
        (f"/ws?api_key={API_KEY}", {}),
        ("/ws", {"additional_headers": {"Authorization": f"Bearer {rs256}"}}),
    ]
    for path, kwargs in ways:
        async with connect(srv.ws_url + path, **kwargs) as ws:
            await echo_once(ws)
    async with connect(srv.ws_url + "/ws", subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"  # echoed: browsers require the chosen protocol back
        await echo_once(ws)


async def test_cli_token_is_accepted_for_its_channels_only(srv: ServerProcess) -> None:
    """`ws-service token --sub --channels --ttl` signs with the server's secret and audience."""
    argv = [str(BIN / "ws-service"), "token", "--sub", "ops", "--channels", "news.*,chat"]
    result = await asyncio.to_thread(
        subprocess.run, [*argv, "--ttl", "60"], env=srv.env, capture_output=True, text=True,
        timeout=scaled(30), check=True,
    )  # fmt: skip
    token = result.stdout.strip()
    USED.append(token)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert claims["sub"] == "ops" and 55 <= claims["exp"] - time.time() <= 61
    async with connect(srv.ws_url + f"/ws/channels/news.x?token={token}") as ws:
        await ws.send("via cli token")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == "via cli token"
    assert (await refusal(srv.ws_url + f"/ws/channels/other?token={token}"))[0] == 403


# 401: missing, invalid or expired credentials.


async def test_no_credentials_is_refused_401(srv: ServerProcess) -> None:
    """No token or key on any endpoint: 401 before the upgrade, with a short body."""
    for path in ("/ws", "/ws/broadcast", "/ws/channels/news"):
        assert await refusal(srv.ws_url + path) == (401, "missing credentials")


async def test_wrong_signature_is_refused_401(srv: ServerProcess) -> None:
    """A token signed with another secret: 401."""
    forged = mint(key="not-the-server-secret-" + secrets.token_hex(16))
    status, body = await refusal(srv.ws_url + f"/ws?token={forged}")
    assert status == 401 and "invalid token" in body and "Signature" in body


async def test_alg_none_is_refused_401(srv: ServerProcess) -> None:
    """An unsigned token (alg none), in the header or the query: 401."""
    unsigned = jwt.encode({"sub": "mallory", "aud": AUDIENCE}, None, algorithm="none")
    USED.append(unsigned)
    status, body = await refusal(
        srv.ws_url + "/ws", additional_headers={"Authorization": f"Bearer {unsigned}"}
    )
    assert (status, body) == (401, "token algorithm 'none' not accepted")
    assert (await refusal(srv.ws_url + f"/ws?token={unsigned}"))[0] == 401


async def test_hs_rs_confusion_is_refused_401(
    srv: ServerProcess, rsa_key: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    """An HS256 token whose HMAC key is the server's RSA public key: 401.

    The classic attack on verifiers that let the token's alg pick how a key is used.
    """
    pem = rsa_key[1].read_bytes()
    claims = {"sub": "mallory", "aud": AUDIENCE, "exp": int(time.time()) + 600}
    status, body = await refusal(srv.ws_url + f"/ws?token={forge_hs256(claims, pem)}")
    assert status == 401 and "invalid token" in body
    # An RSA key accepts RS256 only: an ES256 header finds no key at all.
    status, body = await refusal(srv.ws_url + f"/ws?token={forge_hs256(claims, pem, 'ES256')}")
    assert (status, body) == (401, "token algorithm 'ES256' not accepted")


async def test_expired_token_is_refused_401(srv: ServerProcess) -> None:
    """A token past exp (and the leeway): 401 token expired."""
    stale = mint(exp=time.time() - DEFAULT_LEEWAY - 5)
    assert await refusal(srv.ws_url + f"/ws?token={stale}") == (401, "token expired")


async def test_wrong_audience_is_refused_401(srv: ServerProcess) -> None:
    """With WS_JWT_AUDIENCE set, another audience or none at all: 401."""
    for token in (mint(aud="another-service"), mint(aud=None)):
        status, body = await refusal(srv.ws_url + f"/ws?token={token}")
        assert status == 401 and "invalid token" in body


async def test_garbage_token_is_refused_401(srv: ServerProcess) -> None:
    """Garbage in the query, the header or the subprotocol: 401, never a 500."""
    garbage = ["x", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", b64(b'{"alg":["HS256"]}') + ".e30.x"]
    for junk in garbage:
        assert (await refusal(srv.ws_url + f"/ws?token={junk}"))[0] == 401
        headers = {"Authorization": f"Bearer {junk}"}
        assert (await refusal(srv.ws_url + "/ws", additional_headers=headers))[0] == 401
        protocols: Any = ["bearer", junk]
        assert (await refusal(srv.ws_url + "/ws", subprotocols=protocols))[0] == 401


async def test_wrong_api_key_is_refused_401(srv: ServerProcess) -> None:
    """A wrong key in X-API-Key or ?api_key=: 401, even with a valid token beside it."""
    wrong = API_KEY[:-1] + ("0" if API_KEY[-1] != "0" else "1")
    USED.append(wrong)
    headers = {"X-API-Key": wrong, "Authorization": f"Bearer {mint()}"}
    assert await refusal(srv.ws_url + "/ws", additional_headers=headers) == (
        401,
        "invalid api key",
    )
    assert await refusal(srv.ws_url + f"/ws?api_key={wrong}") == (401, "invalid api key")


# 403: Origin, and channels the token does not permit.


async def test_token_for_another_channel_is_refused_403(srv: ServerProcess) -> None:
    """channels: ["news.*"] joins news.sport but not chat or broadcast: 403."""
    token = mint(channels=["news.*"])
    async with connect(srv.ws_url + f"/ws/channels/news.sport?token={token}") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == "hello"
    for path in ("/ws/channels/chat", "/ws/channels/news", "/ws/broadcast"):
        status, body = await refusal(srv.ws_url + f"{path}?token={token}")
        assert status == 403 and "does not permit channel" in body


async def test_bad_origin_is_refused_403(srv: ServerProcess) -> None:
    """A browser page from another site (cross-site WebSocket hijacking): 403."""
    token = mint()
    for origin in ("https://evil.example", "null", "https://app.example.evil.example"):
        status, body = await refusal(
            srv.ws_url + f"/ws?token={token}",
            origin=origin,  # type: ignore[arg-type]
        )
        assert status == 403 and "not allowed" in body
    async with connect(srv.ws_url + f"/ws?token={token}", origin=ORIGIN) as ws:  # type: ignore[arg-type]
        await echo_once(ws)


# Size and rate limits once connected.


async def test_frame_one_byte_over_the_limit_closes_1009(srv: ServerProcess) -> None:
    """A message of exactly WS_MAX_MESSAGE_BYTES passes; one byte more closes 1009."""
    async with connect(srv.ws_url + f"/ws?api_key={API_KEY}", max_size=None) as ws:
        await ws.send("a" * LIMIT)
        assert await ws.recv() == "Echo: " + "a" * LIMIT
        await ws.send(b"b" * (LIMIT + 1))
        assert (await closed_with(ws))[0] == 1009
    # The limit is on the message, not the frame: fragments that add up to one over, too.
    async with connect(srv.ws_url + f"/ws?api_key={API_KEY}", max_size=None) as ws:
        await ws.send(iter([b"c" * 512, b"c" * 512, b"c"]))
        assert (await closed_with(ws))[0] == 1009


def test_publish_one_byte_over_the_limit_is_413(srv: ServerProcess) -> None:
    """The publish API takes WS_MAX_MESSAGE_BYTES and refuses one byte more with 413.

    Whether the size is declared (Content-Length) or not (chunked): the body is never read
    past the limit.
    """
    path = "/api/channels/news/messages"
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/octet-stream"}
    assert call(srv, "POST", path, b"x" * LIMIT, headers)[0] == 202
    status, body = call(srv, "POST", path, b"x" * (LIMIT + 1), headers)
    assert status == 413 and "too_large" in body
    chunks = iter([b"y" * 1000, b"y" * (LIMIT + 1 - 1000)])
    assert call(srv, "POST", path, chunks, headers, chunked=True)[0] == 413
    # A declared size far beyond the limit is refused before any body arrives.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=scaled(5))
    try:
        conn.putrequest("POST", path)
        conn.putheader("X-API-Key", API_KEY)
        conn.putheader("Content-Length", str(10 * 1024 * 1024 * 1024))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_publish_needs_credentials_and_respects_channels(srv: ServerProcess) -> None:
    """The publish API: no credentials 401, wrong key 401, a token for other channels 403."""
    path = "/api/channels/chat/messages"
    assert call(srv, "POST", path, b"x")[0] == 401
    assert call(srv, "POST", path, b"x", {"X-API-Key": "wrong-key-000000"})[0] == 401
    token = mint(channels=["news.*"])
    assert call(srv, "POST", path, b"x", {"Authorization": f"Bearer {token}"})[0] == 403
    assert call(srv, "POST", f"/api/channels/news.a/messages?token={token}", b"x")[0] == 202


def test_publish_client_leaving_mid_body_is_not_a_server_error(srv: ServerProcess) -> None:
    """A client that disconnects halfway through a body leaves no traceback in the log.

    (Log noise any client could otherwise produce at will; the log scan below checks it.)
    """
    for framing in (b"Content-Length: 1000\r\n\r\n" + b"x" * 10,
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"):  # fmt: skip
        with socket.create_connection(("127.0.0.1", srv.port), timeout=scaled(5)) as sock:
            sock.sendall(
                b"POST /api/channels/news/messages HTTP/1.1\r\nHost: x\r\n"
                + f"X-API-Key: {API_KEY}\r\n".encode()
                + framing
            )
            time.sleep(0.1)  # the handler is now waiting for the rest of the body
    assert call(srv, "GET", "/healthz")[0] == 200


async def test_burst_over_the_rate_limit_closes_1008(srv: ServerProcess) -> None:
    """Sending far faster than WS_RATE_LIMIT: the burst is echoed, then close 1008."""
    async with connect(srv.ws_url + f"/ws?api_key={API_KEY}") as ws:
        started = time.monotonic()
        for i in range(BURST * 3):
            try:
                await ws.send(f"m{i}")
            except ConnectionClosed:
                break
        echoed = 0
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), scaled(10))
                echoed += 1
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "rate limit exceeded")
        refilled = RATE * (time.monotonic() - started)  # tokens that came back meanwhile
        assert BURST <= echoed <= BURST + refilled + 1, (echoed, refilled)


async def test_token_expiring_mid_connection_closes_1008_at_expiry(srv: ServerProcess) -> None:
    """A connection is closed 1008 when its token stops being valid, not before, not later.

    The token has 2.5 s of validity left: its exp is DEFAULT_LEEWAY - 2.5 seconds ago, since
    the server accepts (and keeps) a token until exp + leeway.
    """
    token = mint(exp=time.time() - DEFAULT_LEEWAY + 2.5)
    valid_until = jwt.decode(token, options={"verify_signature": False})["exp"] + DEFAULT_LEEWAY
    async with connect(srv.ws_url + f"/ws?token={token}") as ws:
        await echo_once(ws)
        code, reason = await closed_with(ws)
        closed_at = time.time()
    assert (code, reason) == (1008, "token expired")
    assert valid_until - 0.3 <= closed_at <= valid_until + scaled(1.5)
    # Reconnecting with the same token is now refused: the client must fetch a fresh one.
    assert await refusal(srv.ws_url + f"/ws?token={token}") == (401, "token expired")


# Browsers: the token as a subprotocol, and the Origin check, in real Chromium.

CHROMIUM = Path("/usr/bin/chromium")
HOSTS = "MAP app.test 127.0.0.1, MAP evil.test 127.0.0.1"
OPEN_SOCKET = """async ([url, protocols]) => await new Promise((resolve) => {
  const ws = new WebSocket(url, protocols);
  ws.onopen = () => ws.send("from the browser");
  ws.onmessage = (event) => { resolve({data: event.data, protocol: ws.protocol}); ws.close(); };
  ws.onclose = (event) => resolve({closed: event.code});
})"""


@pytest.fixture  # not module-wide: sync playwright's loop would block the async tests after it
def page() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Two sites on loopback: the app's own and an attacker's, both served by the test server.
    args = ["--headless", "--no-sandbox", "--disable-gpu", f"--host-resolver-rules={HOSTS}"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            context = browser.new_context()
            context.set_default_timeout(scaled(10) * 1000)
            yield context.new_page()
        finally:
            browser.close()


def test_browser_token_as_subprotocol_and_origin_check(page: Any, limited: ServerProcess) -> None:
    """`new WebSocket(url, ["bearer", token])` works in Chromium; another site's page is refused.

    Also with auth off: the offered `bearer` protocol is still selected, or Chromium fails.
    """
    port = free_port()
    app, evil = f"http://app.test:{port}", f"http://evil.test:{port}"
    env = {"WS_AUTH_MODE": "jwt", "WS_JWT_SECRET": SECRET, "WS_ALLOWED_ORIGINS": app}
    with ServerProcess(env, port=port) as browser_srv:
        token = mint(aud=None)
        url = f"ws://app.test:{port}/ws"
        page.goto(app + "/")
        answer = page.evaluate(OPEN_SOCKET, [url, ["bearer", token]])
        assert answer == {"data": "Echo: from the browser", "protocol": "bearer"}
        assert page.evaluate(OPEN_SOCKET, [url, []]) == {"closed": 1006}  # no token: 401
        page.goto(evil + "/")  # cross-site WebSocket hijacking attempt, token and all
        assert page.evaluate(OPEN_SOCKET, [url, ["bearer", token]]) == {"closed": 1006}
        log = browser_srv.log_text()
        assert f"origin '{evil}' not allowed" in log and token not in log
    page.goto(limited.http_url + "/")
    anonymous = page.evaluate(OPEN_SOCKET, [limited.ws_url + "/ws", ["bearer", token]])
    assert anonymous == {"data": "Echo: from the browser", "protocol": "bearer"}


# Bookkeeping: refusals are counted, and the log holds no secret.


def metric(srv: ServerProcess, reason: str) -> float:
    _, text = call(srv, "GET", "/metrics")
    found = re.search(rf'^ws_rejected_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_refusals_are_counted_by_reason(srv: ServerProcess) -> None:
    """Each refused handshake adds one to ws_rejected_total{reason} on /metrics."""
    before = {r: metric(srv, r) for r in ("unauthorized", "origin", "channel", "bad_request")}
    await refusal(srv.ws_url + "/ws")
    await refusal(srv.ws_url + f"/ws?token={mint()}", origin="https://evil.example")  # type: ignore[arg-type]
    await refusal(srv.ws_url + f"/ws/channels/chat?token={mint(channels=['news'])}")
    await refusal(srv.ws_url + "/ws/channels/bad%20name")
    after = {r: metric(srv, r) for r in before}
    assert all(after[r] == before[r] + 1 for r in before), (before, after)


def test_server_log_holds_no_token_or_key(srv: ServerProcess) -> None:
    """After every attack above, no credential sent (nor the secret) is in the server log."""
    log = srv.log_text()
    assert "token=[redacted]" in log  # lines with credentials were written, redacted
    assert "Traceback" not in log and "Exception in ASGI" not in log
    leaked = [secret[:12] + "..." for secret in USED if secret in log]
    assert not leaked, f"{len(leaked)} credential(s) in the log: {leaked}"
    # JSON format: every line is one JSON object.
    lines = [line for line in log.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [ln for ln in lines if ln[:1] != "{"][:3]


# Connection limits: a server of its own with tiny limits and no trusted proxy.


@pytest.fixture(scope="module")
def limited() -> Iterator[ServerProcess]:
    env = {
        "WS_MAX_CONNECTIONS": "3",
        "WS_MAX_CONNECTIONS_PER_IP": "2",
        "WS_FORWARDED_ALLOW_IPS": "192.0.2.1",  # not us: X-Forwarded-For from us is ignored
    }
    with ServerProcess(env) as proc:
        yield proc


def from_address(host: str, xff: str | None = None) -> dict[str, Any]:
    """Client options that make a connection come from loopback address `host`."""
    kwargs: dict[str, Any] = {"local_addr": (host, 0)}
    if xff:
        kwargs["additional_headers"] = {"X-Forwarded-For": xff}
    return kwargs


async def test_more_than_the_per_address_limit_is_refused_429(limited: ServerProcess) -> None:
    """A third connection from one address: 429; forged X-Forwarded-For does not help."""
    url = limited.ws_url + "/ws"
    first = await connect(url, **from_address("127.0.0.1", "203.0.113.1"))
    second = await connect(url, **from_address("127.0.0.1", "203.0.113.2"))
    try:
        status, body = await refusal(url, **from_address("127.0.0.1", "203.0.113.3"))
        assert status == 429 and "127.0.0.1" in body
        async with connect(url, **from_address("127.0.0.2")) as other:  # another address
            await echo_once(other)
        await first.close()
        async with connect(url, **from_address("127.0.0.1")) as again:  # a slot came back
            await echo_once(again)
    finally:
        await first.close()
        await second.close()


async def test_more_than_max_connections_gets_503_and_healthz_still_answers(
    limited: ServerProcess,
) -> None:
    """At WS_MAX_CONNECTIONS the next handshake gets 503, and /healthz answers within 1 s."""
    url = limited.ws_url + "/ws"
    hosts = ("127.0.0.1", "127.0.0.1", "127.0.0.2")
    held = [await connect(url, **from_address(h)) for h in hosts]
    try:
        status, body = await refusal(url, **from_address("127.0.0.3"))
        assert status == 503 and "connection limit" in body
        started = time.monotonic()
        code, health = await asyncio.to_thread(call, limited, "GET", "/healthz")
        assert code == 200 and json.loads(health)["connections"] == 3
        assert time.monotonic() - started < scaled(1.0)
        await held[0].close()
        async with connect(url, **from_address("127.0.0.3")) as ws:
            await echo_once(ws)
    finally:
        for ws in held:
            await ws.close()


# Production refusals: `ws-service serve` and `ws-service check` refuse unsafe settings.

PROD = {"WS_ENV": "production", "WS_AUTH_MODE": "jwt", "WS_JWT_SECRET": "p" * 40}


@pytest.fixture(scope="module")
def world_readable_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o644)
    return cert, key


def production_cases(tls: tuple[Path, Path]) -> list[tuple[dict[str, str], str]]:
    return [
        ({"WS_ENV": "production"}, "WS_AUTH_MODE"),
        ({**PROD, "WS_JWT_SECRET": "too-short-secret"}, "WS_JWT_SECRET"),
        ({**PROD, "WS_AUTH_MODE": "api_key", "WS_API_KEYS": "short"}, "WS_API_KEYS"),
        ({**PROD, "WS_MAX_MESSAGE_BYTES": str(32 * 1024 * 1024)}, "WS_MAX_MESSAGE_BYTES"),
        ({**PROD, "WS_LOG_LEVEL": "trace"}, "WS_LOG_LEVEL"),
        ({**PROD, "WS_HOST": "0.0.0.0", "WS_FORWARDED_ALLOW_IPS": "*"}, "WS_FORWARDED_ALLOW_IPS"),
        (
            {**PROD, "WS_SSL_CERTFILE": str(tls[0]), "WS_SSL_KEYFILE": str(tls[1])},
            "WS_SSL_KEYFILE",
        ),
    ]


def run_all(commands: list[tuple[list[str], dict[str, str]]]) -> list[tuple[int, str, str]]:
    """Run commands in parallel (each a fresh interpreter); exit code, stdout, stderr."""
    procs = [
        subprocess.Popen(
            argv, env=base_env({"WS_PORT": str(free_port()), **env}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for argv, env in commands
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=scaled(60))
        results.append((proc.returncode, out, err))
    return results


def test_production_refuses_unsafe_settings(world_readable_key: tuple[Path, Path]) -> None:
    """WS_ENV=production: serve, check and gunicorn exit non-zero, one line naming the variable.

    `serve` is run once per unsafe setting (each is refused alone); `check` once with all of
    them together (one line each) and once with auth off; gunicorn once with auth off.
    """
    cases = production_cases(world_readable_key)
    combined: dict[str, str] = {}
    for env, _ in cases[1:]:
        combined.update(env)
    combined.update(
        WS_AUTH_MODE="api_key,jwt", WS_JWT_SECRET="too-short-secret", WS_API_KEYS="short"
    )
    ws_service = str(BIN / "ws-service")
    commands = [([ws_service, "serve"], env) for env, _ in cases]
    commands += [
        ([ws_service, "check", "-q"], combined),
        ([ws_service, "check", "-q"], cases[0][0]),
    ]
    commands += [
        ([str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "service.app:app"], cases[0][0])
    ]
    results = run_all(commands)
    for (_, variable), (code, out, err) in zip(cases, results, strict=False):
        lines = err.strip().splitlines()
        assert code != 0, (variable, out, err)
        assert len(lines) == 1 and lines[0].startswith(f"ws-service: {variable}:"), lines
    for (code, out, err), variables in zip(
        results[len(cases) : len(cases) + 2],
        ([variable for _, variable in cases[1:]], [cases[0][1]]),
        strict=True,
    ):
        errors = [line for line in (out + err).splitlines() if line.startswith("error: ")]
        assert code != 0, (out, err)
        assert sorted(e.split(":")[1].strip() for e in errors) == sorted(variables), errors
    code, _, err = results[-1]
    assert code != 0 and err.strip().splitlines()[-1].startswith("ws-service: WS_AUTH_MODE:")


def test_production_accepts_safe_settings_and_explicit_anonymous() -> None:
    """A safe production configuration passes check; so does auth off with WS_ALLOW_ANONYMOUS."""
    anonymous = {"WS_ENV": "production", "WS_ALLOW_ANONYMOUS": "true"}
    results = run_all(
        [([str(BIN / "ws-service"), "check", "-q"], env) for env in (PROD, anonymous)]
    )
    for code, out, err in results:
        assert code == 0 and "configuration ok" in out, (out, err)

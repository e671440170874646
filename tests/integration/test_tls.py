"""wss:// and https:// served directly, with a certificate made at test time (trustme).

Under `ws-service serve` (uvicorn) and under gunicorn (`gunicorn -c config/gunicorn.conf.py`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from tests.support import BIN, ServerProcess, scaled, wait_until

SECRET = "tls-secret-" + secrets.token_hex(24)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    with cert.open("wb") as out:  # leaf first, then the chain
        for pem in issued.cert_chain_pems:
            out.write(pem.bytes())
    return cert, key


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


LAUNCHERS = {
    "serve": None,
    "gunicorn": [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "service.app:app"],
}


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def srv(request: pytest.FixtureRequest, tls_files: tuple[Path, Path]) -> Iterator[ServerProcess]:
    env = {
        "WS_SSL_CERTFILE": str(tls_files[0]),
        "WS_SSL_KEYFILE": str(tls_files[1]),
        "WS_AUTH_MODE": "jwt",
        "WS_JWT_SECRET": SECRET,
        # check the production refusals pass with TLS on (key file mode 600)
        "WS_ENV": "production",
    }
    with ServerProcess(env, argv=LAUNCHERS[request.param], scheme="https") as proc:
        yield proc


def token() -> str:
    return jwt.encode({"sub": "tls", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")


async def test_wss_echo_with_a_verified_certificate(
    srv: ServerProcess, client_context: ssl.SSLContext
) -> None:
    """A client that trusts the test CA gets wss:// echo; the token rides in the subprotocol."""
    assert srv.ws_url.startswith("wss://")
    bearer = token()
    async with connect(
        srv.ws_url + "/ws",
        ssl=client_context,
        subprotocols=["bearer", bearer],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "bearer"
        await ws.send("over tls")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == "Echo: over tls"
    async with connect(srv.ws_url + f"/ws?token={bearer}", ssl=client_context) as ws:
        await ws.send(b"\x00\x01")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == b"Echo: \x00\x01"
    with pytest.raises(InvalidStatus) as info:
        async with connect(srv.ws_url + "/ws", ssl=client_context):
            pass
    assert info.value.response.status_code == 401
    log = srv.log_text()
    assert bearer not in log and SECRET not in log


def test_https_health_and_publish_with_a_verified_certificate(
    srv: ServerProcess, client_context: ssl.SSLContext
) -> None:
    """https:// answers /healthz and the publish API; the access log keeps no ?token=."""
    with urllib.request.urlopen(
        srv.http_url + "/healthz", context=client_context, timeout=scaled(5)
    ) as response:
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    bearer = token()
    request = urllib.request.Request(
        srv.http_url + f"/api/channels/tls/messages?token={bearer}", data=b"x", method="POST"
    )
    with urllib.request.urlopen(request, context=client_context, timeout=scaled(5)) as response:
        assert response.status == 202
    log = wait_until(lambda: "/api/channels/tls/messages" in srv.log_text() and srv.log_text())
    assert "token=[redacted]" in log and bearer not in log


async def test_clients_that_do_not_trust_the_ca_or_speak_plaintext_fail(
    srv: ServerProcess,
) -> None:
    """The server really presents the test certificate, and plain ws:// gets no WebSocket."""
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(srv.ws_url + "/ws", ssl=ssl.create_default_context()):
            pass
    plain = srv.ws_url.replace("wss://", "ws://")
    with pytest.raises((InvalidMessage, InvalidStatus, OSError, EOFError)):
        async with connect(plain + f"/ws?token={token()}", open_timeout=scaled(5)):
            pass

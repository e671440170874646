"""deploy/nginx/ws.conf in a real nginx in front of a real ws-service.

The site file is included as shipped except for ports (loopback, free), certificate and log
paths (a temp folder, certificates from trustme), the upstream address, the IPv6 listens
(dropped: loopback only), and proxy_read_timeout lowered to 3 s so that the keepalive test
takes seconds, with WS_PING_INTERVAL=1 below it as in production (20 s below 60 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.settings import Settings
from tests.support import ServerProcess, free_port, require_binary, scaled, wait_until

SHIPPED = Path(__file__).resolve().parents[2] / "deploy/nginx/ws.conf"
READ_TIMEOUT = 3
HOSTNAME = "ws.example.com"
LIMIT_PER_ADDRESS = 50


@dataclass
class Proxy:
    http_port: int
    https_port: int
    tls: ssl.SSLContext
    access_log: Path
    proc: subprocess.Popen[bytes]

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    def connect(self, path: str, **kwargs: object) -> connect:
        return connect(
            self.wss + path,
            ssl=self.tls,
            server_hostname=HOSTNAME,
            open_timeout=scaled(10),
            **kwargs,  # type: ignore[arg-type]
        )


def site_for_test(tmp: Path, upstream_port: int, http_port: int, https_port: int) -> str:
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(tmp / "cert.pem"), append=True)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    site = SHIPPED.read_text()
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        f"/etc/letsencrypt/live/{HOSTNAME}/fullchain.pem": str(tmp / "cert.pem"),
        f"/etc/letsencrypt/live/{HOSTNAME}/privkey.pem": str(tmp / "key.pem"),
        "/var/log/nginx/": f"{tmp}/",
        "/var/www/letsencrypt": f"{tmp}/acme",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
        "proxy_read_timeout 60s;": f"proxy_read_timeout {READ_TIMEOUT}s;",
    }.items():
        assert old in site, f"{SHIPPED} no longer contains {old!r}"
        site = site.replace(old, new)
    return site


def start_nginx(tmp: Path, upstream_port: int) -> Proxy:
    nginx = require_binary("nginx")
    http_port, https_port = free_port(), free_port()
    (tmp / "ws.conf").write_text(site_for_test(tmp, upstream_port, http_port, https_port))
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read this temp folder
    (tmp / "nginx.conf").write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/ws.conf;
}}
"""
    )
    args = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=scaled(30))
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tls = ssl.create_default_context()
    tls.load_verify_locations(str(tmp / "ca.pem"))
    proxy = Proxy(http_port, https_port, tls, tmp / "ws.access.log", proc)
    wait_until(lambda: https_get(proxy, "/healthz")[0] == 200, 15, what="nginx")
    return proxy


def stop_nginx(proxy: Proxy) -> None:
    proxy.proc.terminate()
    proxy.proc.wait(scaled(10))


def https_get(proxy: Proxy, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"https://127.0.0.1:{proxy.https_port}{path}", headers={"Host": HOSTNAME}
    )
    # The certificate names ws.example.com and 127.0.0.1; urllib checks the URL's host.
    with urllib.request.urlopen(request, timeout=scaled(5), context=proxy.tls) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    env = {"WS_PING_INTERVAL": "1", "WS_PING_TIMEOUT": "5", "WS_LOG_LEVEL": "warning"}
    with ServerProcess(env) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = start_nginx(tmp_path_factory.mktemp("nginx"), upstream.port)
    try:
        yield proxy
    finally:
        stop_nginx(proxy)


def test_plain_http_and_ws_are_redirected_to_https(proxy: Proxy) -> None:
    """http:// and a ws:// handshake both get 301 to https:// with the same path."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(
        f"http://127.0.0.1:{proxy.http_port}/ws/broadcast",
        headers={
            "Host": HOSTNAME,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=scaled(5))
    refused.value.close()
    assert refused.value.code == 301
    assert refused.value.headers["Location"] == f"https://{HOSTNAME}/ws/broadcast"


def test_healthz_answers_through_the_proxy(proxy: Proxy, upstream: ServerProcess) -> None:
    """GET /healthz over https reaches ws-service and returns its JSON."""
    status, body = https_get(proxy, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["pid"] == upstream.pid


async def test_wss_echo_and_broadcast_through_the_proxy(proxy: Proxy) -> None:
    """wss:// echo answers, and a broadcast reaches every client, all through Nginx."""
    async with proxy.connect("/ws") as ws:
        await ws.send("through nginx")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == "Echo: through nginx"
    clients = [await proxy.connect("/ws/broadcast") for _ in range(5)]
    try:
        await clients[0].send("to all")
        got = await asyncio.gather(*(asyncio.wait_for(c.recv(), scaled(5)) for c in clients))
        assert got == ["to all"] * 5
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_idle_websocket_outlives_proxy_read_timeout_thanks_to_pings(
    proxy: Proxy, tmp_path: Path
) -> None:
    """Idle past proxy_read_timeout: kept open by pings; without pings Nginx cuts it."""
    with ServerProcess({"WS_PING_INTERVAL": "0", "WS_LOG_LEVEL": "warning"}) as silent:
        silent_proxy = start_nginx(tmp_path, silent.port)
        try:
            # The client sends no pings of its own: only the server's can keep it open.
            async with (
                proxy.connect("/ws", ping_interval=None) as pinged,
                silent_proxy.connect("/ws", ping_interval=None) as unpinged,
            ):
                await asyncio.sleep(READ_TIMEOUT + 1.5)
                await pinged.send("still here")
                assert await asyncio.wait_for(pinged.recv(), scaled(5)) == "Echo: still here"
                with pytest.raises(ConnectionClosed):
                    await unpinged.send("gone?")
                    await asyncio.wait_for(unpinged.recv(), scaled(5))
        finally:
            stop_nginx(silent_proxy)


async def test_token_query_strings_stay_out_of_the_access_log(proxy: Proxy) -> None:
    """A ?token=... handshake is logged by path only."""
    secret = "s3cr3t-token-value"
    async with proxy.connect(f"/ws?token={secret}&api_key={secret}") as ws:
        await ws.send("x")
        await ws.recv()

    def logged() -> str:
        text = proxy.access_log.read_text()
        return text if '"GET /ws HTTP/1.1" 101' in text else ""

    text = await asyncio.to_thread(wait_until, logged, 10, 0.05, "the access log line")
    assert secret not in text


async def test_limit_conn_refuses_the_51st_connection_from_one_address(proxy: Proxy) -> None:
    """50 open sockets from one address are fine; the 51st handshake gets 429."""
    clients: list[ClientConnection] = []
    try:
        for _ in range(LIMIT_PER_ADDRESS):
            clients.append(await proxy.connect("/ws"))
        with pytest.raises(InvalidStatus) as refused:
            await proxy.connect("/ws")
        assert refused.value.response.status_code == 429
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    async with proxy.connect("/ws") as ws:  # one closed: room again
        await ws.send("again")
        assert await ws.recv() == "Echo: again"


def test_site_keeps_the_keepalive_chain() -> None:
    """proxy_read_timeout is above the default WS_PING_INTERVAL, so idle sockets survive."""
    site = SHIPPED.read_text()
    timeout = re.search(r"^\s*proxy_read_timeout (\d+)s;", site, re.M)
    assert timeout is not None
    assert int(timeout.group(1)) > Settings.model_fields["ping_interval"].default
    for needed in (
        "map $http_upgrade $connection_upgrade",
        "proxy_http_version 1.1;",
        "proxy_buffering off;",
        "least_conn;",
        "X-Forwarded-Proto $scheme;",
    ):
        assert needed in site

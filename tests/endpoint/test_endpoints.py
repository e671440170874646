"""Endpoints in-process (TestClient, memory broker): the generic ASGI path of every route."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect


def test_index_is_the_seed_banner(client: TestClient) -> None:
    """GET / answers the seed's plain-text line."""
    response = client.get("/")
    assert response.status_code == 200
    assert response.text == "WebSocket Server is running"
    assert response.headers["content-type"].startswith("text/plain")


def test_healthz_reports_worker_fields(client: TestClient) -> None:
    """/healthz: status ok, version, pid and this worker's connection count."""
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["version"] and body["pid"] > 0
    assert body["connections"] == 0
    with client.websocket_connect("/ws"):
        assert client.get("/healthz").json()["connections"] == 1


def test_readyz_is_200_with_memory_broker(client: TestClient) -> None:
    """Ready when the broker is up and the worker is not draining."""
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_readyz_is_503_while_draining(client: TestClient) -> None:
    """A draining worker says so, with the reason named."""
    client.app.state.runtime.draining = True  # type: ignore[attr-defined]
    response = client.get("/readyz")
    assert response.status_code == 503 and "draining" in response.json()["reasons"]


def test_echo_text_and_binary(client: TestClient) -> None:
    """Text comes back as text, binary as binary, both with the prefix."""
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "Echo: hi"
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_bytes() == b"Echo: \x00\x01"


def test_empty_prefix_is_a_pure_echo(make_client: Callable[..., TestClient]) -> None:
    """WS_ECHO_PREFIX='' echoes messages unchanged."""
    client = make_client(echo_prefix="")
    with client.websocket_connect("/ws") as ws:
        ws.send_text("same")
        assert ws.receive_text() == "same"


def test_broadcast_reaches_sender_and_others(client: TestClient) -> None:
    """Every /ws/broadcast client gets each message, the sender included."""
    with (
        client.websocket_connect("/ws/broadcast") as a,
        client.websocket_connect("/ws/broadcast") as b,
    ):
        a.send_text("hello all")
        assert a.receive_text() == "hello all"
        assert b.receive_text() == "hello all"


def test_channels_are_isolated(client: TestClient) -> None:
    """A message on one channel never reaches another channel's clients."""
    with (
        client.websocket_connect("/ws/channels/red") as red,
        client.websocket_connect("/ws/channels/blue") as blue,
    ):
        red.send_text("for red")
        blue.send_text("for blue")
        assert red.receive_text() == "for red"
        assert blue.receive_text() == "for blue"


def test_broadcast_is_the_channel_named_broadcast(client: TestClient) -> None:
    """/ws/broadcast and /ws/channels/broadcast are one channel."""
    with (
        client.websocket_connect("/ws/broadcast") as a,
        client.websocket_connect("/ws/channels/broadcast") as b,
    ):
        b.send_text("same room")
        assert a.receive_text() == "same room"


@pytest.mark.parametrize("path", ["/ws/channels/bad%20name", "/ws/channels/" + "x" * 129])
def test_bad_channel_names_are_refused_with_400(client: TestClient, path: str) -> None:
    """Invalid names are refused before the upgrade with a body saying why."""
    with pytest.raises(WebSocketDenialResponse) as info:
        with client.websocket_connect(path):
            pass
    assert info.value.status_code == 400  # type: ignore[attr-defined]
    assert "1 to 128" in info.value.text  # type: ignore[attr-defined]


def test_unknown_websocket_path_is_404(client: TestClient) -> None:
    """A handshake to a path we do not serve gets 404, not a bare 403."""
    with pytest.raises(WebSocketDenialResponse) as info:
        with client.websocket_connect("/nope"):
            pass
    assert info.value.status_code == 404  # type: ignore[attr-defined]


def test_publish_api_text_and_binary(client: TestClient) -> None:
    """text/* bodies arrive as text; anything else as binary; the answer is 202 JSON."""
    with client.websocket_connect("/ws/channels/news") as ws:
        response = client.post(
            "/api/channels/news/messages",
            content="breaking",
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 202
        assert response.json()["kind"] == "text" and response.json()["bytes"] == 8
        assert ws.receive_text() == "breaking"
        response = client.post(
            "/api/channels/news/messages",
            content=b"\x89PNG",
            headers={"content-type": "application/octet-stream"},
        )
        assert response.status_code == 202 and response.json()["kind"] == "binary"
        assert ws.receive_bytes() == b"\x89PNG"


def test_publish_api_refuses_oversized_body(make_client: Callable[..., TestClient]) -> None:
    """A body over WS_MAX_MESSAGE_BYTES is 413."""
    client = make_client(max_message_bytes=10)
    response = client.post("/api/channels/a/messages", content=b"x" * 11)
    assert response.status_code == 413
    assert client.post("/api/channels/a/messages", content=b"x" * 10).status_code == 202


def test_publish_api_refuses_bad_channel(client: TestClient) -> None:
    """The publish API validates names like the WebSocket endpoint."""
    assert client.post("/api/channels/b@d/messages", content=b"x").status_code == 400


def test_message_over_the_limit_closes_1009(make_client: Callable[..., TestClient]) -> None:
    """A message at the limit is fine; one byte over closes the connection with 1009."""
    client = make_client(max_message_bytes=16, echo_prefix="")
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"x" * 16)
        assert ws.receive_bytes() == b"x" * 16
        ws.send_bytes(b"x" * 17)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
        assert info.value.code == 1009


def test_connection_limit_refuses_with_503(make_client: Callable[..., TestClient]) -> None:
    """At WS_MAX_CONNECTIONS the next handshake gets 503 and /healthz still answers."""
    client = make_client(max_connections=1)
    with client.websocket_connect("/ws"):
        with pytest.raises(WebSocketDenialResponse) as info:
            with client.websocket_connect("/ws"):
                pass
        assert info.value.status_code == 503  # type: ignore[attr-defined]
        assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").text.count('reason="max_connections"') == 1


def test_demo_page_is_served(client: TestClient) -> None:
    """/demo is an HTML page with no external resources."""
    response = client.get("/demo")
    assert response.status_code == 200 and "<html" in response.text.lower()
    assert "http://" not in response.text and "https://" not in response.text


def test_api_docs_are_off_in_production(make_client: Callable[..., TestClient]) -> None:
    """WS_ENV=production serves no /docs or /openapi.json (Swagger UI pulls from a CDN)."""
    client = make_client(env="production", auth_mode="api_key", api_keys="k" * 20)
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 404
    assert make_client().get("/openapi.json").status_code == 200

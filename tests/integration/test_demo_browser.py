"""The browser demo at /demo, driven end to end in headless Chromium against real servers.

Uses Debian's chromium (/usr/bin/chromium) through the playwright package; playwright's own
browser download is not used. Missing browser: skipped locally, a failure when CI=true.
The channel test takes the screenshot shown in the docs; it replaces docs/demo.png when
WS_UPDATE_SCREENSHOT=1 (so an ordinary run leaves the work tree clean).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import jwt
import pytest

from tests.support import IN_CI, ServerProcess, scaled

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
JWT_SECRET = "demo-browser-test-secret-0123456789abcdef"
MAX_MESSAGE_BYTES = 1024

REFUSED_WITH_TOKEN = (
    "Connection refused before opening: check the token or channel (the server answered 401/403)"
)


def ms(seconds: float) -> float:
    """A timeout in milliseconds for playwright, scaled by WS_TEST_TIMEOUT_FACTOR."""
    return scaled(seconds) * 1000


# ---- fixtures ----------------------------------------------------------------------------


def _unavailable(why: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"browser tests cannot run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright python package is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(browser: Browser) -> Iterator[ServerProcess]:
    """One no-auth server for the tests that do not restart it or need auth (browser first:
    without one the tests skip before a server starts)."""
    with ServerProcess({"WS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)}) as srv:
        yield srv


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Opens pages, each in its own browser context (like two people); fails on page errors."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(width: int = 1200, height: int = 760) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(ms(10))
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


# ---- helpers ------------------------------------------------------------------------------


def open_demo(page: Page, base_url: str, *, channel: str | None = None, token: str = "") -> None:
    """Loads /demo; with a channel or token, connects to it as a user would."""
    page.goto(base_url + "/demo")
    if channel is None and not token:
        return
    if channel is not None:
        page.get_by_label("Channel name").fill(channel)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Connect", exact=True).click()


def status(page: Page) -> Locator:
    return page.locator("#status")


def wait_open(page: Page, timeout_s: float = 10) -> None:
    from playwright.sync_api import expect

    expect(status(page)).to_have_attribute("data-state", "open", timeout=ms(timeout_s))


def type_and_enter(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def entry(page: Page, kind: str, text: str) -> Locator:
    """Log entries of one kind (sent, echo, channel, broadcast, info, error) with that text."""
    return page.locator(f'#log li[data-kind="{kind}"]', has_text=text)


# ---- tests --------------------------------------------------------------------------------


def test_echo_replies_to_the_sender(server: ServerProcess, new_page: Callable[..., Page]) -> None:
    """The page connects to /ws on load; Enter sends, and "Echo: hi" comes back marked echo."""
    from playwright.sync_api import expect

    page = new_page()
    open_demo(page, server.http_url)
    wait_open(page)
    expect(page.locator("#status-text")).to_contain_text("echo")

    type_and_enter(page, "hi")

    expect(entry(page, "sent", "hi")).to_have_count(1)
    expect(entry(page, "echo", "Echo: hi")).to_have_count(1)
    expect(page.get_by_label("Message", exact=True)).to_have_value("")
    stamp = entry(page, "echo", "Echo: hi").locator("time").inner_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", stamp), stamp


def test_two_pages_on_one_channel_see_each_others_messages(
    server: ServerProcess, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    """Two pages on one channel both get every message, marked as channel traffic."""
    from playwright.sync_api import expect

    alice, bob = new_page(), new_page()
    alice.goto(server.http_url + "/demo?channel=demo-room")  # a link straight to a channel
    open_demo(bob, server.http_url, channel="demo-room")  # picked in the form
    for page in (alice, bob):
        wait_open(page)
        expect(page.locator("#status-text")).to_contain_text("channel demo-room")

    # Senders get their own channel messages too: seeing one proves the page is subscribed.
    type_and_enter(alice, "Alice joined")
    expect(entry(alice, "channel", "Alice joined")).to_have_count(1)
    type_and_enter(bob, "Bob joined")
    expect(entry(bob, "channel", "Bob joined")).to_have_count(1)

    type_and_enter(alice, "hello from Alice")
    bob.get_by_label("Message", exact=True).fill("hi Alice, Bob here")
    bob.get_by_role("button", name="Send").click()

    for page in (alice, bob):
        expect(entry(page, "channel", "hello from Alice")).to_have_count(1)
        expect(entry(page, "channel", "hi Alice, Bob here")).to_have_count(1)
    expect(entry(alice, "sent", "hello from Alice")).to_have_count(1)
    expect(entry(alice, "sent", "Bob here")).to_have_count(0)
    expect(entry(alice, "channel", "Bob joined")).to_have_count(1)
    expect(entry(bob, "channel", "hello from Alice").locator(".tag")).to_have_text("#demo-room")

    # The picture in the docs: Alice's page after a short conversation.
    type_and_enter(bob, "and if the server restarts, the page reconnects by itself")
    expect(entry(alice, "channel", "reconnects by itself")).to_have_count(1)
    type_and_enter(alice, "nice!")
    expect(entry(alice, "channel", "nice!")).to_have_count(1)
    alice.evaluate("document.activeElement.blur()")
    update = os.environ.get("WS_UPDATE_SCREENSHOT") == "1"
    target = SCREENSHOT if update else tmp_path / "demo.png"
    png = alice.screenshot(path=str(target))
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # a real, non-empty picture


def test_broadcast_channel_uses_ws_broadcast(
    server: ServerProcess, new_page: Callable[..., Page]
) -> None:
    """The channel "broadcast" connects to /ws/broadcast and marks its traffic as broadcast."""
    from playwright.sync_api import expect

    page = new_page()
    with page.expect_websocket(lambda ws: ws.url.endswith("/ws/broadcast")) as opened:
        open_demo(page, server.http_url, channel="broadcast")
    assert opened.value.url == server.ws_url + "/ws/broadcast"
    wait_open(page)
    type_and_enter(page, "to everyone")
    expect(entry(page, "broadcast", "to everyone")).to_have_count(1)


def test_bad_channel_name_is_refused_by_the_page(
    server: ServerProcess, new_page: Callable[..., Page]
) -> None:
    """A channel name outside 1-128 of A-Z a-z 0-9 _ . : - is flagged before any connection."""
    from playwright.sync_api import expect

    page = new_page()
    open_demo(page, server.http_url)
    wait_open(page)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    page.get_by_label("Channel name").fill("no spaces/allowed")
    page.get_by_role("button", name="Connect", exact=True).click()

    expect(page.locator("#channel-error")).to_be_visible()
    expect(page.get_by_label("Channel name")).to_have_attribute("aria-invalid", "true")
    assert sockets == []


def test_close_code_is_explained_and_the_page_reconnects(
    server: ServerProcess, new_page: Callable[..., Page]
) -> None:
    """A message over the size limit closes with 1009, which the page names; then it reconnects."""
    from playwright.sync_api import expect

    page = new_page()
    open_demo(page, server.http_url)
    wait_open(page)

    type_and_enter(page, "x" * (MAX_MESSAGE_BYTES + 1))

    expect(page.locator("#close-reason")).to_contain_text("1009", timeout=ms(10))
    expect(page.locator("#close-reason")).to_contain_text("message too big")
    wait_open(page)
    type_and_enter(page, "small again")
    expect(entry(page, "echo", "Echo: small again")).to_have_count(1)


def test_disconnect_stops_reconnecting(
    server: ServerProcess, new_page: Callable[..., Page]
) -> None:
    """After the user presses Disconnect the page stays closed and opens no new socket."""
    from playwright.sync_api import expect

    page = new_page()
    open_demo(page, server.http_url)
    wait_open(page)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    page.get_by_role("button", name="Disconnect").click()

    expect(status(page)).to_have_attribute("data-state", "idle")
    expect(page.locator("#close-reason")).to_contain_text("Disconnected by you")
    page.wait_for_timeout(ms(2))  # longer than the first backoff steps (0.25-1 s)
    expect(status(page)).to_have_attribute("data-state", "idle")
    assert sockets == []


def test_page_reconnects_by_itself_after_a_server_restart(
    new_page: Callable[..., Page],
) -> None:
    """After a server stop (close 1001/1012) and restart on its port, the page reconnects itself."""
    from playwright.sync_api import expect

    with ServerProcess() as srv:
        page = new_page()
        open_demo(page, srv.http_url)
        wait_open(page)
        type_and_enter(page, "before")
        expect(entry(page, "echo", "Echo: before")).to_have_count(1)

        srv.stop()
        expect(page.locator("#close-reason")).to_contain_text(
            re.compile(r"Closed 10(01|12): the server is (stopping|restarting)"), timeout=ms(10)
        )
        expect(status(page)).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
        # Retries against a dead port: told apart from a refusal by the /healthz probe.
        expect(page.locator("#close-reason")).to_contain_text("Server unreachable", timeout=ms(10))
        down_since = time.monotonic()

        srv.start()
        wait_open(page, timeout_s=30)  # backoff is capped near 10 s
        assert time.monotonic() - down_since < scaled(30)
        type_and_enter(page, "after")
        expect(entry(page, "echo", "Echo: after")).to_have_count(1)


def test_bad_token_shows_a_clear_message(new_page: Callable[..., Page]) -> None:
    """A handshake refused for a bad token says so; a good token sent as ?token= connects."""
    from playwright.sync_api import expect

    env = {"WS_AUTH_MODE": "jwt", "WS_JWT_SECRET": JWT_SECRET}
    with ServerProcess(env) as srv:
        page = new_page()
        # On load the page tries /ws without a token (refused too), then the user's token.
        with page.expect_websocket(lambda ws: "token=not-a-jwt" in ws.url) as attempt:
            open_demo(page, srv.http_url, token="not-a-jwt")

        expect(page.locator("#close-reason")).to_have_text(REFUSED_WITH_TOKEN, timeout=ms(10))
        assert attempt.value.is_closed()
        expect(page.locator("#close-reason")).to_be_visible()
        expect(status(page)).not_to_have_attribute("data-state", "open")

        good = jwt.encode(
            {"sub": "demo-browser-test", "exp": int(time.time()) + 300}, JWT_SECRET, "HS256"
        )
        open_demo(page, srv.http_url, token=good)
        wait_open(page)
        type_and_enter(page, "authorised")
        expect(entry(page, "echo", "Echo: authorised")).to_have_count(1)


def test_page_is_self_contained_accessible_and_fits_a_phone(
    server: ServerProcess, new_page: Callable[..., Page]
) -> None:
    """On a phone: nothing loaded from elsewhere, labelled controls, live log, visible focus."""
    from playwright.sync_api import expect

    page = new_page(width=360, height=740)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_demo(page, server.http_url)
    wait_open(page)
    type_and_enter(page, "a fairly long message that has to wrap on a narrow phone screen " * 3)
    expect(entry(page, "echo", "Echo: a fairly long")).to_have_count(1)

    origins = {"{0.scheme}://{0.netloc}".format(urlsplit(url)) for url in requested}
    assert origins == {server.http_url}, requested
    assert page.evaluate("document.documentElement.scrollWidth") <= 360

    for label in ("Echo /ws", "Channel name", "Token"):
        expect(page.get_by_label(label)).to_have_count(1)
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("log")).to_have_attribute("aria-live", "polite")
    expect(page.get_by_role("status")).to_be_visible()

    # Keyboard only: Tab reaches the message box with a visible focus ring, Enter sends.
    page.locator("body").focus()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "message":
            break
    else:
        pytest.fail("Tab never reached the message box")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), outline
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect(entry(page, "echo", "Echo: typed with the keyboard")).to_have_count(1)

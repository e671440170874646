"""`ws-service check` and `ws-service client`, run as an operator runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BIN, RedisServer, ServerProcess, base_env, free_port, scaled

JWT_SECRET = "s3cr3t-jwt-signing-key-0123456789abcdef"
API_KEY = "k3y-for-smoke-tests-0123456789"
REDIS_PASSWORD = "r3dis-pa55word-xyz"
SECRETS = (JWT_SECRET, API_KEY, REDIS_PASSWORD)


def ws_service(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ws-service"), *args],
        input=stdin,
        env=base_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )


# check


def test_check_names_every_bad_setting_on_its_own_line(tmp_path: Path) -> None:
    """Each bad value gets one `error: WS_NAME: ...` line; exit 1; no settings printed."""
    bad = {
        "WS_PORT": "eighty",
        "WS_WORKERS": "0",
        "WS_BROKER_URL": "http://localhost:6379",
        "WS_AUTH_MODE": "password",
        "WS_MAX_MESSAGE_BYTES": "-5",
        "WS_LOG_FORMAT": "xml",
        "WS_SSL_CERTFILE": str(tmp_path / "missing.pem"),
        "WS_PING_INTERVAL": "often",
    }
    result = ws_service("check", env=bad, cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, result.stderr)
    assert len(errors) == len(bad)
    assert "configuration has 8 problem(s)" in result.stderr


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WS_WORKERS": "4"}, "WS_BROKER_URL"),
        ({"WS_AUTH_MODE": "api_key"}, "WS_API_KEYS"),
        ({"WS_AUTH_MODE": "jwt"}, "WS_JWT_SECRET"),
        ({"WS_ENV": "production"}, "WS_AUTH_MODE"),
        (
            {"WS_ENV": "production", "WS_AUTH_MODE": "jwt", "WS_JWT_SECRET": "short"},
            "WS_JWT_SECRET",
        ),
        ({"WS_ENV_FILE": "/nonexistent/ws.env"}, "WS_ENV_FILE"),
    ],
)
def test_check_catches_settings_that_are_wrong_together(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    """Values fine alone but wrong together are reported by the variable to change."""
    result = ws_service("check", "--quiet", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith(f"error: {variable}"), result.stderr


def test_check_reports_a_jwt_key_file_that_does_not_load(tmp_path: Path) -> None:
    """A key file that exists but is not a PEM public key fails the check by name."""
    key = tmp_path / "jwt.pem"
    key.write_text("not a key\n")
    env = {"WS_AUTH_MODE": "jwt", "WS_JWT_PUBLIC_KEY_FILE": str(key)}
    result = ws_service("check", "-q", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "error: WS_JWT_PUBLIC_KEY_FILE:" in result.stderr


def test_check_never_prints_a_secret(tmp_path: Path) -> None:
    """Secrets are masked in the settings and absent from every problem line."""
    env = {
        "WS_AUTH_MODE": "api_key,jwt",
        "WS_JWT_SECRET": JWT_SECRET,
        "WS_API_KEYS": f"{API_KEY},another-key-0123456789",
        "WS_BROKER_URL": f"redis://user:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
    }
    result = ws_service("check", "--timeout", "1", env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1  # nothing listens on that port
    assert "WS_JWT_SECRET=****" in result.stdout and "WS_API_KEYS=****,****" in result.stdout
    assert "error: WS_BROKER_URL:" in result.stderr and "does not answer" in result.stderr
    # The same secrets in values that do not even parse, from an env file this time.
    env_file = tmp_path / "ws.env"
    env_file.write_text(
        f"WS_BROKER_URL=http://user:{REDIS_PASSWORD}@host\nWS_JWT_SECRET={JWT_SECRET}\n"
        f"WS_API_KEYS={API_KEY}\nWS_PORT=x\n"
    )
    broken = ws_service("check", env={"WS_ENV_FILE": str(env_file)}, cwd=tmp_path)
    assert broken.returncode == 1 and "error: WS_BROKER_URL:" in broken.stderr
    output += broken.stdout + broken.stderr
    for secret in SECRETS:
        assert secret not in output


def test_check_passes_with_a_broker_that_answers(tmp_path: Path) -> None:
    """A sound configuration with a live Redis: settings printed, broker answers, exit 0."""
    with RedisServer() as redis:
        env = {"WS_BROKER_URL": redis.url, "WS_WORKERS": "2"}
        result = ws_service("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"WS_BROKER_URL={redis.url}" in result.stdout
    assert "answers in" in result.stdout and result.stdout.rstrip().endswith("configuration ok")
    assert "warning: WS_AUTH_MODE" in result.stderr  # allowed, and said


def test_check_skip_broker_checks_the_configuration_only(tmp_path: Path) -> None:
    """--skip-broker (for ExecStartPre) passes a sound config whose broker is not up yet."""
    env = {"WS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert ws_service("check", "-q", "--timeout", "1", env=env, cwd=tmp_path).returncode == 1
    result = ws_service("check", "-q", "--skip-broker", env=env, cwd=tmp_path)
    assert result.returncode == 0 and "configuration ok" in result.stdout


# client


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {
        "WS_AUTH_MODE": "api_key,jwt",
        "WS_API_KEYS": API_KEY,
        "WS_JWT_SECRET": JWT_SECRET,
        "WS_MAX_MESSAGE_BYTES": "64",
        "WS_RATE_LIMIT": "1",
        "WS_RATE_BURST": "3",
        "WS_LOG_LEVEL": "warning",
    }
    with ServerProcess(env) as srv:
        yield srv


def client(
    srv: ServerProcess, path: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return ws_service("client", srv.ws_url + path, "--wait", str(scaled(0.5)), *args, stdin=stdin)


def test_client_echoes_stdin_lines_and_exits_0(server: ServerProcess) -> None:
    """Each stdin line goes out as a message; each reply is printed on its own line."""
    result = client(server, "/ws", "--api-key", API_KEY, stdin="hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Echo: hello", "Echo: world"]


def test_client_sends_a_token_or_any_header(server: ServerProcess) -> None:
    """--token is sent as a Bearer token, --header as given."""
    token = ws_service("token", "--sub", "smoke", env={"WS_JWT_SECRET": JWT_SECRET})
    assert token.returncode == 0, token.stderr
    by_token = client(server, "/ws", "--token", token.stdout.strip(), stdin="a\n")
    by_header = client(server, "/ws", "--header", f"X-API-Key: {API_KEY}", stdin="b\n")
    assert (by_token.returncode, by_token.stdout) == (0, "Echo: a\n")
    assert (by_header.returncode, by_header.stdout) == (0, "Echo: b\n")


def test_client_refused_handshake_exits_3_with_the_status(server: ServerProcess) -> None:
    """No credentials: the 401 and its body are shown, exit 3."""
    result = client(server, "/ws", stdin="hi\n")
    assert result.returncode == 3
    assert "refused: HTTP 401" in result.stderr


@pytest.mark.parametrize(
    ("stdin", "code"),
    [("x" * 100 + "\n", 1009), ("1\n2\n3\n4\n5\n6\n", 1008)],
    ids=["too-big", "rate-limited"],
)
def test_client_exits_1_when_the_server_closes_with_an_error(
    server: ServerProcess, stdin: str, code: int
) -> None:
    """1009 for a message over the limit, 1008 past the rate limit: exit 1, code shown."""
    result = client(server, "/ws", "--api-key", API_KEY, stdin=stdin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"closed by server: {code}" in result.stderr


def test_client_cannot_connect_exits_4() -> None:
    """Nothing listening: a short reason and exit 4."""
    result = ws_service("client", f"ws://127.0.0.1:{free_port()}/ws", "--timeout", "2")
    assert result.returncode == 4 and "cannot connect" in result.stderr


def test_client_bad_header_is_a_usage_error() -> None:
    """A --header without a colon is refused before connecting, exit 2."""
    result = ws_service("client", "ws://127.0.0.1:1/ws", "--header", "NoColonHere")
    assert result.returncode == 2 and "--header" in result.stderr


def test_serve_refuses_a_key_file_that_does_not_load(tmp_path: Path) -> None:
    """`ws-service serve` with an unreadable JWT key: one line naming it, exit 2, no traceback."""
    key = tmp_path / "bad.pem"
    key.write_text("not a key")
    env = base_env({"WS_AUTH_MODE": "jwt", "WS_JWT_PUBLIC_KEY_FILE": str(key), "WS_PORT": "0"})
    done = subprocess.run(
        [str(BIN / "ws-service"), "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.startswith("ws-service: WS_JWT_PUBLIC_KEY_FILE:")
    assert "Traceback" not in done.stderr

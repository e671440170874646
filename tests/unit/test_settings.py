"""Settings: every contract variable parsed and validated, one line per problem."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.settings import load_settings, validated


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("WS_") or name in ("PORT", "WEB_CONCURRENCY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_contract() -> None:
    """With no environment the contract's defaults apply."""
    s = validated(load_settings())
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.broker_url == "memory://" and s.redis_prefix == "ws:"
    assert s.auth_mode == () and not s.auth_enabled
    assert s.max_connections == 10000 and s.max_message_bytes == 1048576
    assert (s.ping_interval, s.ping_timeout, s.send_queue) == (20, 20, 1000)
    assert s.echo_prefix == "Echo: " and s.graceful_timeout == 30
    assert (s.env, s.log_level, s.log_format) == ("development", "info", "text")


def test_port_and_workers_fall_back_to_paas_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """PORT and WEB_CONCURRENCY are honoured when the WS_ names are unset."""
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    s = load_settings()
    assert (s.port, s.workers) == (9100, 3)
    monkeypatch.setenv("WS_PORT", "9200")
    assert load_settings().port == 9200


def test_comma_lists_are_split_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """WS_API_KEYS, WS_ALLOWED_ORIGINS and WS_AUTH_MODE accept comma-separated values."""
    monkeypatch.setenv("WS_API_KEYS", "k1, k2,,k3")
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://a.example/, https://b.example")
    monkeypatch.setenv("WS_AUTH_MODE", "jwt,api_key")
    s = load_settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2", "k3"]
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.auth_mode == ("api_key", "jwt")


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("WS_PORT", "eighty", "WS_PORT"),
        ("WS_PORT", "70000", "WS_PORT"),
        ("WS_WORKERS", "0", "WS_WORKERS"),
        ("WS_BROKER_URL", "kafka://x", "WS_BROKER_URL"),
        ("WS_AUTH_MODE", "password", "WS_AUTH_MODE"),
        ("WS_MAX_MESSAGE_BYTES", "-1", "WS_MAX_MESSAGE_BYTES"),
        ("WS_SEND_QUEUE", "0", "WS_SEND_QUEUE"),
        ("WS_LOG_FORMAT", "xml", "WS_LOG_FORMAT"),
        ("WS_ENV", "staging", "WS_ENV"),
        ("WS_SSL_CERTFILE", "/nonexistent/cert.pem", "WS_SSL_CERTFILE"),
        ("WS_ALLOW_ANONYMOUS", "maybe", "WS_ALLOW_ANONYMOUS"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    """Each invalid value becomes one line that starts with the variable's name."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        validated(load_settings())
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(needle), info.value.lines


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several bad values give several lines, not just the first."""
    monkeypatch.setenv("WS_PORT", "x")
    monkeypatch.setenv("WS_SEND_QUEUE", "-5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert {line.split(":")[0].split(" ")[0] for line in info.value.lines} == {
        "WS_PORT",
        "WS_SEND_QUEUE",
    }


def test_memory_broker_with_several_workers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// cannot span processes: the refusal tells to use redis://."""
    monkeypatch.setenv("WS_WORKERS", "4")
    with pytest.raises(ConfigError) as info:
        validated(load_settings())
    assert info.value.lines[0].startswith("WS_BROKER_URL")
    assert "redis://" in info.value.lines[0]


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """WS_ENV_FILE points at a dotenv file; variables in the environment win over it."""
    env_file = tmp_path / "ws.env"
    env_file.write_text("WS_PORT=9300\nWS_ECHO_PREFIX=>> \n")
    monkeypatch.setenv("WS_ENV_FILE", str(env_file))
    s = load_settings()
    assert s.port == 9300
    monkeypatch.setenv("WS_PORT", "9400")
    assert load_settings().port == 9400


def test_missing_env_file_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WS_ENV_FILE that does not exist is refused by name."""
    monkeypatch.setenv("WS_ENV_FILE", "/nonexistent/ws.env")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.lines == ["WS_ENV_FILE: no such file: /nonexistent/ws.env"]


def test_masked_settings_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """masked() shows every variable but no key, secret or URL password."""
    monkeypatch.setenv("WS_API_KEYS", "supersecretkey1,supersecretkey2")
    monkeypatch.setenv("WS_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("WS_BROKER_URL", "redis://user:hunter2@redis.internal:6379/0")
    shown = load_settings().masked()
    text = "\n".join(f"{k}={v}" for k, v in shown.items())
    assert "supersecretkey" not in text and "x" * 40 not in text and "hunter2" not in text
    assert shown["WS_BROKER_URL"] == "redis://user:****@redis.internal:6379/0"
    assert "WS_MAX_CONNECTIONS" in shown


def test_a_bad_redis_url_is_one_line_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis URL that cannot be parsed is refused by name, with its password masked."""
    monkeypatch.setenv("WS_BROKER_URL", "redis://user:hunter2@redis:abc/0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    (line,) = info.value.lines
    assert line.startswith("WS_BROKER_URL: not a valid Redis URL")
    assert "hunter2" not in line and "****" in line

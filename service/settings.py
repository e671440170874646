"""The one reader of the environment.

Every `WS_*` variable of the contract is a field here, validated once at start-up. A bad value
becomes a `ConfigError` whose lines each name the variable and what is wrong, so `ws-service
serve` and gunicorn print one line per problem instead of a traceback wall. Everything below the
composition points (`app.py`, the gunicorn worker and config) receives plain values from here
and never reads the environment itself.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError

ENV_PREFIX = "WS_"
AUTH_MODES = ("api_key", "jwt")
MIN_PRODUCTION_JWT_SECRET = 32

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Configuration of one instance, from `WS_*` variables and an optional env file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("WS_PORT", "PORT"))
    workers: int = Field(
        1, ge=1, le=256, validation_alias=AliasChoices("WS_WORKERS", "WEB_CONCURRENCY")
    )

    broker_url: str = "memory://"
    redis_prefix: str = "ws:"

    auth_mode: CommaList = ()
    allow_anonymous: bool = False
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    jwt_secret: SecretStr = SecretStr("")
    jwt_public_key_file: Path | None = None
    jwt_audience: str = ""
    jwt_issuer: str = ""
    allowed_origins: CommaList = ()
    forwarded_allow_ips: str = "127.0.0.1"

    max_connections: int = Field(10000, ge=1)
    max_connections_per_ip: int = Field(0, ge=0)
    max_message_bytes: int = Field(1048576, ge=1, le=64 * 1024 * 1024)
    rate_limit: float = Field(0, ge=0)
    rate_burst: int = Field(0, ge=0)
    ping_interval: float = Field(20, ge=0)
    ping_timeout: float = Field(20, ge=0)
    send_queue: int = Field(1000, ge=1)
    echo_prefix: str = "Echo: "

    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    graceful_timeout: int = Field(30, ge=1)
    drain_spread: float = Field(2.0, ge=0)

    env: Literal["development", "production"] = "development"
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    log_format: Literal["text", "json"] = "text"
    metrics: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return tuple(origin.rstrip("/") for origin in _split_commas(value))

    @field_validator("auth_mode", mode="before")
    @classmethod
    def _parse_auth_mode(cls, value: Any) -> Any:
        modes = _split_commas(value)
        if modes in (("none",), ()):
            return ()
        unknown = [m for m in modes if m not in AUTH_MODES]
        if unknown:
            raise ValueError(f"unknown mode {unknown[0]!r}: use none, api_key, jwt or api_key,jwt")
        return tuple(sorted(set(modes)))

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("memory", "redis", "rediss"):
            raise ValueError(f"unsupported scheme {scheme!r}: use memory://, redis:// or rediss://")
        if scheme != "memory":
            from redis.asyncio.connection import parse_url

            try:
                parse_url(value)
            except ValueError as exc:
                raise ValueError(f"not a valid Redis URL: {exc}") from None
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("jwt_public_key_file", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("jwt_public_key_file", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    # Derived views, so the parts below never re-parse settings.

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_mode)

    @property
    def broker_is_memory(self) -> bool:
        return self.broker_url.startswith("memory:")

    @property
    def tls_enabled(self) -> bool:
        return self.ssl_certfile is not None

    def problems(self) -> list[str]:
        """Combinations that are each valid alone but wrong together, one line per problem."""
        found: list[str] = []
        if self.broker_is_memory and self.workers > 1:
            found.append(
                "WS_BROKER_URL: memory:// works in one process only but "
                f"WS_WORKERS={self.workers}; use redis://host:port/db so clients on "
                "different workers see each other"
            )
        if "api_key" in self.auth_mode and not self.api_keys:
            found.append("WS_API_KEYS: empty but WS_AUTH_MODE includes api_key")
        if "jwt" in self.auth_mode and not (
            self.jwt_secret.get_secret_value() or self.jwt_public_key_file
        ):
            found.append(
                "WS_JWT_SECRET: empty (and no WS_JWT_PUBLIC_KEY_FILE) but WS_AUTH_MODE includes jwt"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            found.append("WS_SSL_CERTFILE, WS_SSL_KEYFILE: set both or neither")
        if self.ping_interval and self.ping_timeout == 0:
            found.append("WS_PING_TIMEOUT: 0 with pings on would never detect a dead peer")
        if self.drain_spread >= self.graceful_timeout - 1:
            found.append(
                f"WS_DRAIN_SPREAD: {self.drain_spread}s must end well before "
                f"WS_GRACEFUL_TIMEOUT={self.graceful_timeout}s"
            )
        if self.env == "production":
            found.extend(self._production_problems())
        return found

    def _production_problems(self) -> list[str]:
        found: list[str] = []
        if not self.auth_enabled and not self.allow_anonymous:
            found.append(
                "WS_AUTH_MODE: none is refused with WS_ENV=production; "
                "set api_key and/or jwt, or WS_ALLOW_ANONYMOUS=true on purpose"
            )
        secret = self.jwt_secret.get_secret_value().encode()
        if "jwt" in self.auth_mode and secret and len(secret) < MIN_PRODUCTION_JWT_SECRET:
            found.append(
                f"WS_JWT_SECRET: {len(secret)} bytes, production needs at least "
                f"{MIN_PRODUCTION_JWT_SECRET}"
            )
        short_keys = [k for k in self.api_keys if len(k.get_secret_value()) < 16]
        if "api_key" in self.auth_mode and short_keys:
            found.append(f"WS_API_KEYS: {len(short_keys)} key(s) shorter than 16 characters")
        if self.max_message_bytes > 16 * 1024 * 1024:
            found.append(
                f"WS_MAX_MESSAGE_BYTES: {self.max_message_bytes} is above 16 MiB, "
                "an easy memory DoS"
            )
        if self.log_level == "trace":
            found.append("WS_LOG_LEVEL: trace logs raw request headers, credentials included")
        if "*" in self.forwarded_allow_ips and self.host not in ("127.0.0.1", "::1", "localhost"):
            found.append(
                "WS_FORWARDED_ALLOW_IPS: * on a public bind lets any client forge "
                "X-Forwarded-For (and dodge WS_MAX_CONNECTIONS_PER_IP); list the proxy addresses"
            )
        if self.ssl_keyfile is not None and self.ssl_keyfile.stat().st_mode & 0o004:
            found.append(
                f"WS_SSL_KEYFILE: {self.ssl_keyfile} is readable by every user (chmod 600)"
            )
        return found

    def masked(self) -> dict[str, str]:
        """The effective settings as `WS_NAME -> value` with every secret masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "****" if value.get_secret_value() else ""
            elif isinstance(value, tuple):
                text = ",".join("****" if isinstance(v, SecretStr) else str(v) for v in value)
            elif name == "broker_url":
                text = mask_url(value)
            else:
                text = "" if value is None else str(value)
            shown[env_name(name)] = text
        return shown


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def mask_url(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:****@host`: URLs may carry passwords."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return parts._replace(netloc=netloc).geturl()


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"][0] if error["loc"] else ""
    name = str(loc) if str(loc).isupper() else env_name(str(loc))
    if name == "WS_PORT":
        name = "WS_PORT (or PORT)"
    elif name == "WS_WORKERS":
        name = "WS_WORKERS (or WEB_CONCURRENCY)"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if name == "WS_BROKER_URL" and isinstance(given, str):
        given = mask_url(given)
    if isinstance(given, str) and "secret" not in name.lower() and "key" not in name.lower():
        return f"{name}: {message} (got {given!r})"
    return f"{name}: {message}"


def load_settings(env_file: str | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment; raise ConfigError listing every problem."""
    env_file = env_file if env_file is not None else os.environ.get("WS_ENV_FILE")
    if env_file and not Path(env_file).is_file():
        raise ConfigError([f"WS_ENV_FILE: no such file: {env_file}"])
    try:
        settings = Settings(_env_file=env_file or ".env", **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None  # type: ignore[arg-type]
    return settings


def validated(settings: Settings) -> Settings:
    """Return settings unchanged, or raise ConfigError with every cross-field problem."""
    problems = settings.problems()
    if problems:
        raise ConfigError(problems)
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own and pass them to `create_app`."""
    return validated(load_settings())

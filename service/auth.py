"""Who is connecting: API keys and JWTs checked before the upgrade, with no I/O.

Credentials come from `?token=` / `Authorization: Bearer` (JWT), `?api_key=` / `X-API-Key`
(API keys), or, so browsers can keep tokens out of URLs and proxy logs, the subprotocol pair
`Sec-WebSocket-Protocol: bearer, <jwt>` (the server then selects `bearer`).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path

import jwt

from .channels import permitted
from .errors import Unauthorized

BEARER_SUBPROTOCOL = "bearer"
HMAC_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller; `channels` None means any channel."""

    subject: str
    method: str
    channels: tuple[str, ...] | None = None
    expires_at: float | None = None
    subprotocol: str | None = None

    def may_join(self, channel: str) -> bool:
        return permitted(self.channels, channel)


ANONYMOUS = Principal(subject="anonymous", method="none")


class Authenticator:
    """Checks credentials according to WS_AUTH_MODE; raises Unauthorized (401)."""

    def __init__(
        self,
        *,
        modes: Sequence[str],
        api_keys: Sequence[str] = (),
        jwt_secret: str = "",
        jwt_public_key_file: Path | None = None,
        audience: str = "",
        issuer: str = "",
        leeway: float = 10.0,
    ) -> None:
        self.modes = frozenset(modes)
        self._api_keys = tuple(k.encode() for k in api_keys)
        self._secret = jwt_secret
        self._public_key = jwt_public_key_file.read_text() if jwt_public_key_file else ""
        self._audience = audience or None
        self._issuer = issuer or None
        self._leeway = leeway

    @property
    def enabled(self) -> bool:
        return bool(self.modes)

    def authenticate(
        self,
        *,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        subprotocols: Sequence[str] = (),
    ) -> Principal:
        if not self.modes:
            return ANONYMOUS
        if "api_key" in self.modes:
            key = headers.get("x-api-key") or query.get("api_key")
            if key:
                return self.check_api_key(key)
        if "jwt" in self.modes:
            token, subprotocol = _find_token(headers, query, subprotocols)
            if token:
                return dataclasses.replace(self.check_jwt(token), subprotocol=subprotocol)
        raise Unauthorized("missing credentials")

    def check_api_key(self, key: str) -> Principal:
        given = key.encode()
        # compare_digest against every key: the time taken does not reveal which one matched.
        matched = False
        for known in self._api_keys:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise Unauthorized("invalid api key")
        return Principal(subject="api-key", method="api_key")

    def check_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg in HMAC_ALGORITHMS and self._secret:
                key, algorithms = self._secret, list(HMAC_ALGORITHMS)
            elif alg in PUBLIC_KEY_ALGORITHMS and self._public_key:
                key, algorithms = self._public_key, list(PUBLIC_KEY_ALGORITHMS)
            else:
                raise Unauthorized(f"token algorithm {alg!r} not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {_short(exc)}") from None
        channels = claims.get("channels")
        if channels is not None and (
            not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
        ):
            raise Unauthorized("invalid token: channels must be a list of names")
        exp = claims.get("exp")
        return Principal(
            subject=str(claims["sub"]),
            method="jwt",
            channels=tuple(channels) if channels is not None else None,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )


def _find_token(
    headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
) -> tuple[str, str | None]:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), None
    if BEARER_SUBPROTOCOL in subprotocols:
        index = list(subprotocols).index(BEARER_SUBPROTOCOL)
        if index + 1 < len(subprotocols):
            return subprotocols[index + 1], BEARER_SUBPROTOCOL
    return query.get("token", ""), None


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]

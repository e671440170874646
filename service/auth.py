"""Who is connecting: API keys and JWTs checked before the upgrade, with no I/O.

Credentials come from `?token=` / `Authorization: Bearer` (JWT), `?api_key=` / `X-API-Key`
(API keys), or, so browsers can keep tokens out of URLs and proxy logs, the subprotocol pair
`Sec-WebSocket-Protocol: bearer, <jwt>` (the server then selects `bearer`).

Each configured key accepts exactly one algorithm, fixed by the key's type: the HS256 secret,
an RSA public key (RS256) or a P-256 public key (ES256). The token's own `alg` header only
picks among those, so `alg: none` and HS/RS confusion (an HS256 token "signed" with the
public key) have nothing to match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .channels import permitted
from .errors import ConfigError, Unauthorized

BEARER_SUBPROTOCOL = "bearer"
DEFAULT_LEEWAY = 10.0
"""Seconds of clock skew tolerated on `exp`, `nbf` and `iat` (and so on open connections)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller; `channels` None means any channel.

    `expires_at` is when the credentials stop being accepted (epoch seconds, leeway
    included): an open connection is closed then.
    """

    subject: str
    method: str
    channels: tuple[str, ...] | None = None
    expires_at: float | None = None
    subprotocol: str | None = None

    def may_join(self, channel: str) -> bool:
        return permitted(self.channels, channel)


ANONYMOUS = Principal(subject="anonymous", method="none")


def public_key_algorithm(pem: bytes) -> tuple[str, Any]:
    """The one algorithm a PEM public key may verify, and the loaded key; ValueError if none."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ValueError(f"unsupported key type {type(key).__name__}: use RSA (RS256) or P-256 (ES256)")


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
        leeway: float = DEFAULT_LEEWAY,
    ) -> None:
        self.modes = frozenset(modes)
        # Digests, compared in constant time: equal lengths whatever the caller sends.
        self._api_keys = tuple(_digest(k) for k in api_keys)
        self._keys: dict[str, Any] = {}  # alg -> the one key that verifies it
        if jwt_secret:
            self._keys["HS256"] = jwt_secret
        if jwt_public_key_file is not None:
            try:
                alg, key = public_key_algorithm(jwt_public_key_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    [f"WS_JWT_PUBLIC_KEY_FILE: {jwt_public_key_file}: {_short(exc)}"]
                ) from None
            self._keys[alg] = key
        self._audience = audience or None
        self._issuer = issuer or None
        self._leeway = leeway

    @property
    def enabled(self) -> bool:
        return bool(self.modes)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def authenticate(
        self,
        *,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        subprotocols: Sequence[str] = (),
    ) -> Principal:
        principal = self._identify(headers, query, subprotocols)
        # A browser that offered `bearer` fails the handshake unless it is selected, whatever
        # the auth mode (Chrome: "no response was received" for the protocol it sent).
        if BEARER_SUBPROTOCOL in subprotocols:
            return dataclasses.replace(principal, subprotocol=BEARER_SUBPROTOCOL)
        return principal

    def _identify(
        self, headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
    ) -> Principal:
        if not self.modes:
            return ANONYMOUS
        if "api_key" in self.modes:
            key = headers.get("x-api-key") or query.get("api_key")
            if key:
                return self.check_api_key(key)
        if "jwt" in self.modes:
            token = _find_token(headers, query, subprotocols)
            if token:
                return self.check_jwt(token)
        raise Unauthorized("missing credentials")

    def check_api_key(self, key: str) -> Principal:
        given = _digest(key)
        # compare_digest against every key: the time taken does not reveal which one matched.
        matched = False
        for known in self._api_keys:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise Unauthorized("invalid api key")
        return Principal(subject="api-key", method="api_key")

    def check_jwt(self, token: str) -> Principal:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if not isinstance(alg, str) or alg not in self._keys:
                shown = alg[:20] if isinstance(alg, str) else type(alg).__name__
                raise Unauthorized(f"token algorithm {shown!r} not accepted")
            key = self._keys[alg]
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:  # InvalidKeyError is not an InvalidTokenError
            raise Unauthorized(f"invalid token: {_short(exc)}") from None
        channels = claims.get("channels")
        if channels is not None and (
            not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
        ):
            raise Unauthorized("invalid token: channels must be a list of names")
        exp = claims.get("exp")
        try:
            # PyJWT accepts the token up to exp + leeway; the connection lives as long.
            expires_at = float(exp) + self._leeway if isinstance(exp, int | float) else None
        except OverflowError:
            raise Unauthorized("invalid token: exp out of range") from None
        return Principal(
            subject=claims["sub"],
            method="jwt",
            channels=tuple(channels) if channels is not None else None,
            expires_at=expires_at,
        )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _find_token(
    headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
) -> str:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if BEARER_SUBPROTOCOL in subprotocols:
        index = list(subprotocols).index(BEARER_SUBPROTOCOL)
        if index + 1 < len(subprotocols):
            return subprotocols[index + 1]
    return query.get("token", "")


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]

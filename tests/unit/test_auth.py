"""Authenticator: API keys and JWTs decided from headers, query and subprotocols alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth import (
    ANONYMOUS,
    BEARER_SUBPROTOCOL,
    DEFAULT_LEEWAY,
    Authenticator,
    public_key_algorithm,
)
from service.errors import ConfigError, Unauthorized

SECRET = "unit-test-secret-that-is-long-enough-0123"
KEY = "unit-test-api-key-0123456789"


def token(claims: dict[str, Any] | None = None, secret: str = SECRET, **extra: Any) -> str:
    body: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    body.update(claims or {})
    body.update(extra)
    return jwt.encode(body, secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """An HS256-style token signed with any bytes as the HMAC key (PyJWT refuses PEM keys)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_file(tmp_path: Path, rsa_private: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_private))
    return path


def jwt_auth(**kwargs: Any) -> Authenticator:
    return Authenticator(modes=("jwt",), jwt_secret=SECRET, **kwargs)


def both() -> Authenticator:
    return Authenticator(modes=("api_key", "jwt"), api_keys=[KEY], jwt_secret=SECRET)


def test_mode_none_admits_anyone_as_anonymous() -> None:
    """With no auth mode every caller is the anonymous principal, free to join any channel."""
    auth = Authenticator(modes=())
    principal = auth.authenticate(headers={}, query={})
    assert principal is ANONYMOUS and principal.may_join("anything")
    assert not auth.enabled


def test_missing_credentials_are_refused() -> None:
    """With auth on and nothing presented: 401 missing credentials."""
    with pytest.raises(Unauthorized, match="missing credentials") as info:
        both().authenticate(headers={}, query={})
    assert info.value.status == 401


def test_api_key_from_header_or_query() -> None:
    """X-API-Key and ?api_key= are both accepted; a wrong key is refused."""
    auth = both()
    assert auth.authenticate(headers={"x-api-key": KEY}, query={}).method == "api_key"
    assert auth.authenticate(headers={}, query={"api_key": KEY}).method == "api_key"
    for wrong in ("nope", KEY + "x", KEY[:-1], "", "é" * 40):
        if wrong:
            with pytest.raises(Unauthorized, match="invalid api key"):
                auth.authenticate(headers={"x-api-key": wrong}, query={})


def test_api_key_mode_ignores_tokens() -> None:
    """In api_key mode a valid JWT is not a credential."""
    auth = Authenticator(modes=("api_key",), api_keys=[KEY], jwt_secret=SECRET)
    with pytest.raises(Unauthorized, match="missing"):
        auth.authenticate(headers={"authorization": f"Bearer {token()}"}, query={})


def test_jwt_from_bearer_header_query_or_subprotocol() -> None:
    """A token is found in Authorization: Bearer, ?token=, or the `bearer, <jwt>` subprotocols."""
    auth, good = jwt_auth(), token()
    by_header = auth.authenticate(headers={"authorization": f"Bearer {good}"}, query={})
    by_query = auth.authenticate(headers={}, query={"token": good})
    by_protocol = auth.authenticate(headers={}, query={}, subprotocols=[BEARER_SUBPROTOCOL, good])
    assert by_header.subject == by_query.subject == by_protocol.subject == "alice"
    assert by_protocol.subprotocol == BEARER_SUBPROTOCOL  # echoed back as the chosen protocol
    assert by_header.subprotocol is None and by_query.subprotocol is None


def test_offered_bearer_subprotocol_is_selected_in_every_mode() -> None:
    """A browser that offers `bearer` gets it back whatever the mode, or its handshake fails."""
    offered = [BEARER_SUBPROTOCOL, token()]
    anonymous = Authenticator(modes=()).authenticate(headers={}, query={}, subprotocols=offered)
    by_key = both().authenticate(headers={"x-api-key": KEY}, query={}, subprotocols=offered)
    assert anonymous.subprotocol == by_key.subprotocol == BEARER_SUBPROTOCOL
    assert Authenticator(modes=()).authenticate(headers={}, query={}).subprotocol is None


def test_bearer_subprotocol_without_a_token_is_missing_credentials() -> None:
    """`bearer` alone as the last subprotocol carries no token."""
    with pytest.raises(Unauthorized, match="missing"):
        jwt_auth().authenticate(headers={}, query={}, subprotocols=[BEARER_SUBPROTOCOL])


def test_wrong_signature_is_refused() -> None:
    """A token signed with another secret fails verification."""
    with pytest.raises(Unauthorized, match="invalid token"):
        jwt_auth().check_jwt(token(secret="another-secret-that-is-long-enough-000"))


def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is never accepted."""
    unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none")
    with pytest.raises(Unauthorized, match="algorithm 'none' not accepted"):
        jwt_auth().check_jwt(unsigned)


def test_algorithms_are_pinned_by_key_type(rsa_file: Path, rsa_private: Any) -> None:
    """An RSA key accepts RS256 only; no other alg in the header finds a key."""
    auth = Authenticator(modes=("jwt",), jwt_public_key_file=rsa_file)
    assert auth.algorithms == ("RS256",)
    good = jwt.encode({"sub": "bob"}, rsa_private, algorithm="RS256")
    assert auth.check_jwt(good).subject == "bob"
    for alg in ("HS256", "ES256", "PS256", "RS512"):
        with pytest.raises(Unauthorized, match="not accepted"):
            auth.check_jwt(forge({"alg": alg, "typ": "JWT"}, {"sub": "bob"}, b"k"))


def test_hs_rs_confusion_is_refused(rsa_file: Path) -> None:
    """An HS256 token signed with the public key PEM as its secret is refused.

    Both with only the public key configured (no HS256 key at all) and with both a secret
    and the public key (HS256 is verified with the secret, never with the public key).
    """
    pem = rsa_file.read_bytes()
    confused = forge({"alg": "HS256", "typ": "JWT"}, {"sub": "mallory"}, pem)
    only_public = Authenticator(modes=("jwt",), jwt_public_key_file=rsa_file)
    with pytest.raises(Unauthorized, match="not accepted"):
        only_public.check_jwt(confused)
    mixed = Authenticator(modes=("jwt",), jwt_secret=SECRET, jwt_public_key_file=rsa_file)
    assert mixed.algorithms == ("HS256", "RS256")
    with pytest.raises(Unauthorized, match="invalid token"):
        mixed.check_jwt(confused)


def test_es256_key_accepts_es256_only(tmp_path: Path) -> None:
    """A P-256 key pins ES256; an RS256 header is refused."""
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(pem_public(private))
    auth = Authenticator(modes=("jwt",), jwt_public_key_file=path)
    assert auth.algorithms == ("ES256",)
    assert auth.check_jwt(jwt.encode({"sub": "e"}, private, algorithm="ES256")).subject == "e"
    with pytest.raises(Unauthorized):
        auth.check_jwt(forge({"alg": "RS256"}, {"sub": "e"}, b"x"))


def test_unusable_public_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not an RSA or P-256 public key stops start-up naming the variable."""
    path = tmp_path / "bad.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError) as info:
        Authenticator(modes=("jwt",), jwt_public_key_file=path)
    assert info.value.lines[0].startswith("WS_JWT_PUBLIC_KEY_FILE:")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem_public(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ConfigError, match="P-256"):
        Authenticator(modes=("jwt",), jwt_public_key_file=p384)
    assert public_key_algorithm(pem_public(ec.generate_private_key(ec.SECP256R1())))[0] == "ES256"


def test_expired_token_is_refused_after_the_leeway() -> None:
    """exp is honoured with DEFAULT_LEEWAY seconds of clock skew, and no more."""
    auth = jwt_auth()
    now = int(time.time())
    assert auth.check_jwt(token(exp=now - int(DEFAULT_LEEWAY) + 3)).subject == "alice"
    with pytest.raises(Unauthorized, match="token expired"):
        auth.check_jwt(token(exp=now - int(DEFAULT_LEEWAY) - 3))


def test_not_yet_valid_token_is_refused() -> None:
    """nbf in the future (beyond the leeway) is refused."""
    with pytest.raises(Unauthorized, match="invalid token"):
        jwt_auth().check_jwt(token(nbf=int(time.time()) + 3600))


def test_expires_at_includes_the_leeway() -> None:
    """A connection lives exactly as long as a handshake would still accept its token."""
    exp = int(time.time()) + 100
    principal = jwt_auth().check_jwt(token(exp=exp))
    assert principal.expires_at == exp + DEFAULT_LEEWAY
    no_exp = jwt.encode({"sub": "forever"}, SECRET, algorithm="HS256")
    assert jwt_auth().check_jwt(no_exp).expires_at is None


def test_sub_is_required_and_must_be_a_string() -> None:
    """A token without `sub`, or with a non-string one, is refused."""
    with pytest.raises(Unauthorized, match="sub"):
        jwt_auth().check_jwt(jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256"))
    with pytest.raises(Unauthorized, match="invalid token"):
        jwt_auth().check_jwt(forge({"alg": "HS256"}, {"sub": 42}, SECRET.encode()))


def test_audience_and_issuer_are_checked_when_configured() -> None:
    """With WS_JWT_AUDIENCE/ISSUER set, a missing or different aud/iss is refused."""
    auth = jwt_auth(audience="ws", issuer="https://issuer.example")
    good = token(aud="ws", iss="https://issuer.example")
    assert auth.check_jwt(good).subject == "alice"
    for bad in (
        token(iss="https://issuer.example"),
        token(aud="other", iss="https://issuer.example"),
        token(aud="ws"),
        token(aud="ws", iss="https://evil.example"),
    ):
        with pytest.raises(Unauthorized):
            auth.check_jwt(bad)


def test_channels_claim_limits_channels_with_wildcards() -> None:
    """`channels: ["news.*", "chat"]` joins news.x and chat, nothing else."""
    principal = jwt_auth().check_jwt(token(channels=["news.*", "chat"]))
    assert principal.channels == ("news.*", "chat")
    assert principal.may_join("news.sport") and principal.may_join("chat")
    assert not principal.may_join("news") and not principal.may_join("chat2")
    assert not principal.may_join("broadcast")
    assert jwt_auth().check_jwt(token()).may_join("anything")


@pytest.mark.parametrize("channels", ["news", [1, 2], {"a": 1}, ["ok", None]])
def test_malformed_channels_claim_is_refused(channels: Any) -> None:
    """A channels claim that is not a list of strings is refused, not guessed at."""
    with pytest.raises(Unauthorized, match="channels"):
        jwt_auth().check_jwt(token(channels=channels))


@pytest.mark.parametrize(
    "garbage",
    [
        "x",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        b64(b'{"alg": ["HS256"]}') + ".e30.sig",
        b64(b'{"alg": {"x": 1}}') + ".e30.sig",
        b64(b"[1, 2]") + ".e30.sig",
        b64(b'{"alg": "HS256"}') + "." + b64(b"[]") + ".sig",
        "é" * 50,
        forge({"alg": "HS256"}, {"sub": "a", "exp": 10**400}, SECRET.encode()),
        forge({"alg": "HS256"}, {"sub": "a", "exp": float("inf")}, SECRET.encode()),
    ],
)
def test_garbage_tokens_are_refused_as_unauthorized(garbage: str) -> None:
    """Malformed tokens of every shape end in Unauthorized, never another exception."""
    with pytest.raises(Unauthorized):
        jwt_auth().check_jwt(garbage)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
claims_strategy = st.dictionaries(
    st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "channels", "x"]), json_values
)


@settings(max_examples=200, deadline=None, database=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit"]), json_values),
       claims=claims_strategy)  # fmt: skip
def test_any_signed_header_and_claims_end_in_a_principal_or_unauthorized(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    """Whatever JSON a correctly signed token carries, the answer is a Principal or a 401."""
    header = {"alg": "HS256", **header}
    auth = Authenticator(
        modes=("jwt",), jwt_secret=SECRET, audience="ws", issuer="https://issuer.example"
    )
    try:
        principal = auth.check_jwt(forge(header, claims, SECRET.encode()))
    except Unauthorized:
        return
    assert isinstance(principal.subject, str) and principal.method == "jwt"

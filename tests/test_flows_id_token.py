"""ID token validation, OpenID Connect Core §3.1.3.7: tokens signed here with keys of our own."""

from __future__ import annotations

from typing import Any

import pytest
from broker.flows.errors import IdTokenError
from broker.flows.id_token import validate
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

NOW = 1_800_000_000
ISSUER = "https://id.acme.example"
CLIENT = "broker-cli"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
JWKS = dict(KeySet([KEY]).as_dict(private=False))
ALG_NONE_HEADER = "eyJhbGciOiJub25lIn0"
"""``{"alg":"none"}``, base64url."""


def signed(key: RSAKey = KEY, **changes: Any) -> str:
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "u1", "email": "alice@acme.example", "iat": NOW, "exp": NOW + 300}
    claims.update(changes)
    return jwt.encode({"alg": "RS256", "kid": "k1"}, {k: v for k, v in claims.items() if v is not None}, key)


def check(token: str, jwks: dict[str, Any] | None = JWKS, **options: Any) -> dict[str, Any]:
    return validate(token, **{"issuer": ISSUER, "client_id": CLIENT, "now": NOW, "jwks": jwks, **options})


@pytest.mark.parametrize("jwks", [JWKS, None], ids=["signature-checked", "no-jwks"])
def test_a_valid_id_token_gives_its_claims(jwks: dict[str, Any] | None) -> None:
    assert check(signed(), jwks)["email"] == "alice@acme.example"


def test_an_audience_list_with_the_client_and_azp_is_valid() -> None:
    assert check(signed(aud=[CLIENT, "api"], azp=CLIENT))["sub"] == "u1"


@pytest.mark.parametrize("jwks", [JWKS, None], ids=["signature-checked", "no-jwks"])
@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "https://attacker.example"}, "'iss'"),
        ({"aud": "another-client"}, "'aud'"),
        ({"exp": NOW - 600}, "expired"),
        ({"iss": None}, "'iss'"),
        ({"aud": None}, "'aud'"),
        ({"exp": None}, "'exp'"),
    ],
    ids=["another-issuer", "another-audience", "expired", "no-iss", "no-aud", "no-exp"],
)
def test_claims_of_another_issuer_audience_or_time_are_refused(
    changes: dict[str, Any], reason: str, jwks: dict[str, Any] | None
) -> None:
    with pytest.raises(IdTokenError, match=reason):
        check(signed(**changes), jwks)


def test_a_signature_by_another_key_is_refused() -> None:
    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with pytest.raises(IdTokenError, match="signature does not match"):
        check(signed(forger))


def test_an_unsigned_token_is_refused_when_there_is_a_jwks() -> None:
    payload = signed().split(".")[1]
    with pytest.raises(IdTokenError):
        check(f"{ALG_NONE_HEADER}.{payload}.")


def test_algorithms_that_a_jwks_cannot_check_are_refused() -> None:
    with pytest.raises(IdTokenError, match="HS256"):
        check(signed(), algorithms=["HS256"])


def test_an_at_hash_of_another_access_token_is_refused() -> None:
    with pytest.raises(IdTokenError, match="at_hash"):
        check(signed(at_hash="AAAAAAAAAAAAAAAAAAAAAA"), access_token="the-access-token")


def test_garbage_is_refused_with_a_clear_error() -> None:
    with pytest.raises(IdTokenError, match="the id_token"):
        check("not.a.jwt", None)

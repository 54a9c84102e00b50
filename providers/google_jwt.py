"""The JWT a service account trades for an access token: RFC 7523 §2.1, signed RS256 (RFC 7518 §3.3).

A service account key file holds an RSA private key and no refresh token; each access
token is bought with a fresh assertion signed by that key (RFC 7519 claims, §3 of
RFC 7523 for what the authorization server checks).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography's RSA is imported when a service account key is read, not at start
    from cryptography.hazmat.primitives.asymmetric import rsa

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LIFETIME = 3600
"""Google refuses assertions that live longer than an hour."""


def load_rsa_key(pem: str) -> rsa.RSAPrivateKey:
    """The RSA private key of a PEM block; ValueError that names no key material when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key (RS256 needs one)")
    return key


def bearer_claims(issuer: str, audience: str, scope: str, now: float, lifetime: int = LIFETIME) -> dict[str, Any]:
    """RFC 7523 §3 claims as Google wants them: ``scope`` names what the token may do."""
    issued = int(now)
    return {"iss": issuer, "scope": scope, "aud": audience, "iat": issued, "exp": issued + lifetime}


def sign_rs256(key: rsa.RSAPrivateKey, claims: Mapping[str, Any], key_id: str | None = None) -> str:
    """A compact JWS (RFC 7515 §7.1) of ``claims``: RSASSA-PKCS1-v1_5 with SHA-256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if key_id:
        header["kid"] = key_id
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _segment(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

"""Validating an ID token received at the token endpoint, OpenID Connect Core §3.1.3.7.

``iss`` must be the issuer the login went to, ``aud`` must hold the client id (and
``azp`` name it when there are other audiences), ``exp`` must lie ahead and ``iat`` be
present; ``at_hash``, when present, must match the access token. The signature is
checked against the issuer's JWKS when discovery gives one (joserfc, as authlib's own
OpenID client does); without one, §3.1.3.7 (6) accepts a token that came over TLS
straight from the token endpoint, and the claims are still checked.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, cast

from authlib.oidc.core import CodeIDToken
from broker.flows.errors import IdTokenError
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from joserfc.jws import JWSRegistry

LEEWAY = 120
"""Seconds of clock skew tolerated on ``exp`` and ``iat`` (what authlib's client allows)."""
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Asymmetric algorithms only: ``none`` and the HMAC ones cannot be checked against a JWKS."""


def validate(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    now: float,
    jwks: Mapping[str, Any] | None,
    algorithms: Collection[str] = (),
    access_token: str | None = None,
) -> dict[str, Any]:
    """The claims of a valid ID token; IdTokenError says what is wrong with any other.

    ``algorithms``: the server's ``id_token_signing_alg_values_supported``; RS256 when empty.
    """
    try:
        header, claims = _verified(id_token, jwks, algorithms) if jwks is not None else _unverified(id_token)
        checked = CodeIDToken(
            claims,
            header,
            {"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}},
            {"client_id": client_id, "access_token": access_token},
        )
        checked.validate(now=int(now), leeway=LEEWAY)
    except BadSignatureError:
        raise IdTokenError("the id_token's signature does not match the issuer's keys (its JWKS)") from None
    except JoseError as exc:
        raise IdTokenError(f"the id_token is not valid: {exc.description or exc.error}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise IdTokenError(f"the id_token is not valid: {exc}") from None
    return dict(claims)


def _verified(
    id_token: str, jwks: Mapping[str, Any], algorithms: Collection[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    allowed = [alg for alg in algorithms or ("RS256",) if alg in SIGNING_ALGORITHMS]
    if not allowed:
        raise IdTokenError(f"the id_token is signed with {', '.join(algorithms)}: none can be checked with a JWKS")
    keys = KeySet.import_key_set(cast(KeySetSerialization, dict(jwks)))
    token = jwt.decode(id_token, keys, registry=JWSRegistry(algorithms=allowed, strict_check_header=False))
    return dict(token.header), dict(token.claims)


def _unverified(id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    compact = jws.extract_compact(id_token.encode())
    claims = json.loads(compact.payload)
    if not isinstance(claims, dict):
        raise IdTokenError("the id_token's payload is not a JSON object")
    return dict(compact.headers()), claims

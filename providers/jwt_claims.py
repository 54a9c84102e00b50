"""Reading claims from a JWT the client received directly from the token endpoint.

The signature is not checked: the token came over TLS from the issuer itself, which
OpenID Connect Core §3.1.3.7 (6) accepts for tokens obtained at the token endpoint.
The claims are used for naming accounts and reading expiries, never for access decisions.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def claims(token: str | None) -> dict[str, Any]:
    """The payload of a JWS compact token, or ``{}`` for anything else."""
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError, RecursionError):  # RecursionError: a payload nested too deeply
        return {}
    return value if isinstance(value, dict) else {}


def account_name(values: dict[str, Any]) -> str | None:
    """The most readable identity in a claim set or a userinfo answer."""
    for key in ("email", "preferred_username", "login", "sub"):
        value = values.get(key)
        if isinstance(value, str) and value:
            return value
    return None

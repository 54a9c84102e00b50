"""The credential the daemon holds, and how it is stored and served."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CredentialKey = tuple[str, str]
"""(provider, account): one credential per pair."""


@dataclass(frozen=True)
class Credential:
    """One login of one account at one provider.

    Secrets are excluded from ``repr`` so a credential can never leak through a log
    line or a traceback that prints it.
    """

    provider: str
    account: str
    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    """UTC epoch seconds; ``None`` for a token that does not expire (API key, PAT)."""
    issued_at: float | None = None
    """When ``access_token`` was obtained; with ``expires_at`` it gives the lifetime."""
    token_type: str = "Bearer"
    base_url: str | None = None
    api: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    source: str = "login"
    """``login``, ``env`` or the path of a followed CLI file."""
    lead: float | None = None
    """Refresh at least this many seconds before expiry (a followed CLI that refreshes early itself)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Provider-specific data kept with the login (id_token, upstream grant, scopes)."""

    @property
    def key(self) -> CredentialKey:
        return (self.provider, self.account)

    def remaining(self, now: float) -> float:
        """Seconds of validity left; infinite for tokens that do not expire."""
        return float("inf") if self.expires_at is None else self.expires_at - now

    def replace(self, **changes: Any) -> Credential:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credential:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

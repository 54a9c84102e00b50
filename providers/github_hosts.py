"""Where GitHub or a GitHub Enterprise host keeps its login, its REST API and Copilot's API.

github.com serves the device flow itself and its REST API on ``api.github.com``; an
enterprise host ``https://ghe.example.com`` serves the device flow itself, its REST API
(and the Copilot token exchange) on ``https://api.ghe.example.com`` and Copilot's chat
API on ``https://copilot-api.ghe.example.com`` (GHE.com data residency, as the Copilot
editors derive it; GitHub Enterprise Server's ``/api/v3`` layout is unverified, so such
a host sets the ``api`` endpoint in config).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

GITHUB_URL = "https://github.com"
GITHUB_API = "https://api.github.com"
COPILOT_API = "https://api.githubcopilot.com"
"""Copilot's chat API when the Copilot token names none (the value models.dev uses)."""


@dataclass(frozen=True)
class GitHubHost:
    """One GitHub: ``scheme://host[:port]``, nothing after it."""

    url: str = GITHUB_URL

    @classmethod
    def parse(cls, value: str | None) -> GitHubHost:
        """github.com for ``None``; a bare host name means https; a path is dropped.

        Raises ValueError with a reason a person can act on.
        """
        if not value:
            return cls()
        text = value.strip()
        if "://" not in text:
            text = "https://" + text
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"{value!r} has a bad port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL of a host, like https://ghe.example.com")
        host = cls(f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower())
        return cls() if host.url in (GITHUB_URL, GITHUB_API) else host

    @property
    def is_github_com(self) -> bool:
        return self.url == GITHUB_URL

    @property
    def enterprise_url(self) -> str | None:
        """What a credential remembers: ``None`` for github.com."""
        return None if self.is_github_com else self.url

    def _sub(self, label: str) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{label}.{rest}"

    @property
    def device_code(self) -> str:
        return f"{self.url}/login/device/code"

    @property
    def access_token(self) -> str:
        return f"{self.url}/login/oauth/access_token"

    @property
    def api(self) -> str:
        """The REST API base (``/user``, ``/copilot_internal/v2/token``)."""
        return GITHUB_API if self.is_github_com else self._sub("api")

    @property
    def copilot_api(self) -> str:
        """Copilot's chat API when the Copilot token does not name one."""
        return COPILOT_API if self.is_github_com else self._sub("copilot-api")

"""Local model servers with no auth: Ollama, vLLM, LM Studio.

Nothing to log in to and nothing to store: the daemon serves a token answer with an
empty key and the server's base URL, so tools find every provider the same way.
Whether the server runs is asked only when ``broker status`` asks (a one-second
``GET /models``), never polled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext
from broker.providers.table import Table

from broker.core.config import Section
from broker.core.errors import BadRequest
from broker.core.model import Credential

PROBE_TIMEOUT = 1.0
SERVERS = {
    "ollama": ("Ollama (local, no auth)", "http://localhost:11434/v1"),
    "vllm": ("vLLM (local, no auth)", "http://localhost:8000/v1"),
    "lmstudio": ("LM Studio (local, no auth)", "http://localhost:1234/v1"),
}
"""Name -> (description, default base URL)."""


@dataclass
class LocalProvider(Provider):
    name: str
    base_url: str | None
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    api: str = "openai-chat"
    auth: str = "none"
    flows: tuple[str, ...] = ()
    needs_credential: bool = False

    @classmethod
    def from_config(cls, name: str, section: Section) -> LocalProvider:
        description, base_url = SERVERS[name]
        shared = Table(base_url=base_url, description=description, headers=True, proxy=False).read(section)
        shared["base_url"] = shared["base_url"].rstrip("/")  # probed as {base_url}/models
        return cls(name=name, **shared)

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        raise BadRequest(
            f"{self.name} needs no login: it is served without a key at {self.base_url}",
            f"to use another address, set base_url under [providers.{self.name}]",
        )

    def served(self, credential: Credential) -> dict[str, Any]:
        return {"base_url": self.base_url, "api": self.api, "headers": dict(self.headers), "auth": self.auth}

    async def probe(self, ctx: ProviderContext) -> str | None:
        """``ready`` when the server answers HTTP at ``/models`` within a second, else ``unreachable``."""
        try:
            async with ctx.session.get(
                f"{self.base_url}/models",
                headers=self.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ):
                return "ready"
        except (TimeoutError, aiohttp.ClientError):
            return "unreachable"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "login": "none (local server, no auth)"}


BUILTINS = {name: LocalProvider.from_config for name in SERVERS}
"""Name -> factory, merged into ``providers.registry.BUILTINS``."""

"""Providers reached with a plain API key: one table of services, one class for them all.

The key is pasted once (``broker login NAME``: a hidden prompt, or ``--key-stdin``)
and kept in the store like every other secret; it never expires, so there is nothing
to refresh. The services differ only in data: base URL, API style and the header the
key travels in (``Authorization: Bearer``, ``x-api-key`` or Azure's ``api-key`` with
its ``api-version`` query parameter). ``[providers.NAME] type = "apikey"`` entries in
the config describe any other OpenAI- or Anthropic-compatible endpoint the same way.

The key is not checked against the network at login: each service has its own
"who am I" call, some have none, and a mistyped key shows at the first request anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.providers.base import LoginContext, LoginRequest, Provider
from broker.providers.table import Table

from broker.core.config import Section
from broker.core.errors import BadRequest
from broker.core.model import Credential

APIS = ("openai-chat", "openai-responses", "anthropic")
AUTH_HEADERS = ("bearer", "x-api-key", "api-key")
AZURE_API_VERSION = "2024-10-21"
"""Azure OpenAI's GA data-plane version; ``api_version`` in the config picks another."""
AZURE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
"""Resource and deployment names as Azure allows them: they go into a URL."""
KEY_CHARS = re.compile(r"[\x21-\x7e]+")
"""Printable ASCII without spaces: anything else cannot travel in an HTTP header."""
AZURE_KEYS = ("resource", "deployment", "api_version")
CUSTOM_KEYS = ("type", "api", "auth_header")
"""Keys of Azure's and of a ``type = "apikey"`` table, beside those every API-key provider takes (``_table``)."""


@dataclass(frozen=True)
class Service:
    """One row of the compatibility table (providers.md)."""

    name: str
    title: str
    base_url: str | None
    api: str
    auth: str = "bearer"
    key_label: str = "API key"
    owner: str | None = None
    """Whose key it is, when the title says more than that (a config entry); else the title."""

    @property
    def key_name(self) -> str:
        """What the key is called, e.g. Google Gemini API key: a word the owner ends with is not said twice."""
        owner, label = (self.owner or self.title).split(), self.key_label.split()
        if owner and label and owner[-1] == label[0]:
            label = label[1:]
        return " ".join([*owner, *label])


SERVICES = (
    Service("anthropic", "Anthropic", "https://api.anthropic.com", "anthropic", "x-api-key"),
    Service("minimax", "MiniMax (Anthropic-compatible)", "https://api.minimax.io/anthropic", "anthropic", "x-api-key",
            owner="MiniMax"),
    Service("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "openai-chat"),
    Service("xai", "xAI Grok", "https://api.x.ai/v1", "openai-chat"),
    Service("openai", "OpenAI", "https://api.openai.com/v1", "openai-chat"),
    Service("deepseek", "DeepSeek", "https://api.deepseek.com", "openai-chat"),
    Service("moonshot", "Kimi / Moonshot", "https://api.moonshot.ai/v1", "openai-chat", owner="Moonshot"),
    Service("glm", "GLM (Zhipu / Z.ai)", "https://api.z.ai/api/paas/v4", "openai-chat", owner="Z.ai"),
    Service("groq", "Groq", "https://api.groq.com/openai/v1", "openai-chat"),
    Service("mistral", "Mistral", "https://api.mistral.ai/v1", "openai-chat"),
    Service("together", "Together", "https://api.together.xyz/v1", "openai-chat"),
    Service("perplexity", "Perplexity", "https://api.perplexity.ai", "openai-chat"),
    Service("cerebras", "Cerebras", "https://api.cerebras.ai/v1", "openai-chat"),
    Service("gemini-api", "Google Gemini API", "https://generativelanguage.googleapis.com/v1beta/openai",
            "openai-chat"),
    Service("dashscope", "Alibaba DashScope", "https://dashscope.aliyuncs.com/compatible-mode/v1", "openai-chat"),
    Service("azure", "Azure OpenAI", None, "openai-chat", "api-key"),
    Service("bedrock", "Amazon Bedrock through a LiteLLM proxy", "http://localhost:4000/v1", "openai-chat",
            key_label="proxy key", owner="LiteLLM"),
)  # fmt: skip
"""Every built-in API-key provider; ``azure`` builds its base URL from the config."""


@dataclass
class ApiKeyProvider(Provider):
    name: str
    api: str
    base_url: str | None
    auth: str = "bearer"
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    """Query parameters every request needs (Azure's ``api-version``)."""
    proxy: str | None = None
    secret_prompt: str | None = "API key"
    setup_hint: str = ""
    """Why the provider cannot serve yet (Azure without resource and deployment)."""
    flows: tuple[str, ...] = ("apikey",)
    secret_env: str | None = None
    """Never read from the environment: a key exported for another tool would be stored silently."""

    @classmethod
    def builtin(cls, service: Service, section: Section) -> ApiKeyProvider:
        """A built-in row of the table, with the overrides of its ``[providers.NAME]`` table."""
        if service.name == "azure":
            return cls._azure(service, section)
        return cls._from(service, section, _table(service.title, service.base_url).read(section))

    @classmethod
    def from_config(cls, name: str, section: Section) -> ApiKeyProvider:
        """A ``type = "apikey"`` entry: any OpenAI- or Anthropic-compatible endpoint with a key."""
        title = f"API-key endpoint {name} from config"
        shared = _table(title, own=CUSTOM_KEYS).read(section)
        service = Service(
            name=name,
            title=title,
            owner=name,
            base_url=section.url("base_url"),  # required here
            api=section.choice("api", APIS, "openai-chat"),
            auth=section.choice("auth_header", AUTH_HEADERS, "bearer"),
        )
        return cls._from(service, section, shared)

    @classmethod
    def _azure(cls, service: Service, section: Section) -> ApiKeyProvider:
        """Azure OpenAI: ``https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT``."""
        shared = _table(service.title, own=AZURE_KEYS).read(section)
        resource, deployment = _azure_name(section, "resource"), _azure_name(section, "deployment")
        if shared["base_url"] is None and resource and deployment:
            shared["base_url"] = f"https://{resource}.openai.azure.com/openai/deployments/{deployment}"
        provider = cls._from(service, section, shared)
        provider.query = {"api-version": section.text("api_version", AZURE_API_VERSION), **provider.query}
        if provider.base_url is None:
            provider.setup_hint = "set resource and deployment (or base_url) under [providers.azure] in the config"
        return provider

    @classmethod
    def _from(cls, service: Service, section: Section, shared: dict[str, Any]) -> ApiKeyProvider:
        return cls(
            name=service.name,
            **shared,
            api=service.api,
            auth=service.auth,
            query=section.text_table("query"),
            secret_prompt=service.key_name,
        )

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        if request.flow not in (None, "apikey"):
            raise BadRequest(f"{self.name} logs in with an API key, not {request.flow}")
        if self.setup_hint:
            raise BadRequest(f"{self.name} has no base URL yet", self.setup_hint)
        key = (request.secret or "").strip()
        if not key:
            raise BadRequest(
                f"{self.name} needs its {self.secret_prompt}",
                f"run broker login {self.name} in a terminal, or pipe the key in with --key-stdin",
            )
        if not KEY_CHARS.fullmatch(key):
            raise BadRequest(
                "the key contains spaces, control or non-ASCII characters", "paste the key alone, on one line"
            )
        return Credential(
            provider=self.name,
            account=request.account or "default",
            access_token=key,
            base_url=self.base_url,
            api=self.api,
            source="login",
        )

    def served(self, credential: Credential) -> dict[str, Any]:
        """The config's base URL, headers and query win: a config change needs no new login."""
        answer: dict[str, Any] = {
            "base_url": self.base_url or credential.base_url,
            "api": self.api,
            "headers": dict(self.headers),
            "auth": self.auth,
        }
        if self.query:
            answer["query"] = dict(self.query)
        return answer

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "login": f"broker login {self.name} (API key)"}
        if self.query:
            described["query"] = dict(self.query)
        if self.setup_hint:
            described["setup"] = self.setup_hint
        return described


def _table(title: str, base_url: str | None = None, own: tuple[str, ...] = ()) -> Table:
    """What an API-key provider's table takes: its description defaults to the service's title."""
    return Table(base_url=base_url, description=title, headers=True, own=("query", *own))


def _azure_name(section: Section, key: str) -> str | None:
    value = section.optional_text(key)
    if value is not None and not AZURE_NAME.fullmatch(value):
        raise section.error(key, "must be an Azure name: letters, digits, '-', '_' or '.'")
    return value


def builtin_factory(service: Service) -> Callable[[str, Section], ApiKeyProvider]:
    """The registry's factory for one row of the table."""

    def factory(name: str, section: Section) -> ApiKeyProvider:
        return ApiKeyProvider.builtin(service, section)

    return factory


BUILTINS = {service.name: builtin_factory(service) for service in SERVICES}
"""Name -> factory, merged into ``providers.registry.BUILTINS``."""

"""Maps provider names to providers: the built-ins, configured or not, plus config's own.

A built-in (``copilot``, ``codex``, ...) reads its optional ``[providers.NAME]`` table
for overrides; any other ``[providers.NAME]`` table needs a ``type`` that picks its
factory (``oauth`` for any OAuth 2.0 server).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping

from broker.providers import apikey, local
from broker.providers.apikey import ApiKeyProvider
from broker.providers.base import SHARED_KEYS, FollowSettings, Provider, callers_problem
from broker.providers.claude import ClaudeProvider
from broker.providers.codex import CodexProvider
from broker.providers.copilot import CopilotProvider
from broker.providers.custom import CustomOAuthProvider
from broker.providers.gemini import GeminiProvider
from broker.providers.gitlab import GitLabProvider
from broker.providers.qwen import QwenProvider
from broker.providers.vertex import VertexProvider

from broker.core.config import Section
from broker.core.errors import UnknownProvider

ProviderFactory = Callable[[str, Section], Provider]

BUILTINS: Mapping[str, ProviderFactory] = {
    "claude": ClaudeProvider.from_config,
    "codex": CodexProvider.from_config,
    "copilot": CopilotProvider.from_config,
    "gemini": GeminiProvider.from_config,
    "gitlab": GitLabProvider.from_config,
    "qwen": QwenProvider.from_config,
    "vertex": VertexProvider.from_config,
    **apikey.BUILTINS,
    **local.BUILTINS,
}
"""Providers broker knows without any config, by name."""

CONFIG_TYPES: Mapping[str, ProviderFactory] = {
    "oauth": CustomOAuthProvider.from_config,
    "apikey": ApiKeyProvider.from_config,
}
"""Factories for ``[providers.NAME] type = ...`` tables."""


class Registry:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._providers, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UnknownProvider(
                f"no provider named {name!r}",
                f"{hint}run: broker providers (or add [providers.{name}] to the config)",
            ) from None

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers.values())

    def __contains__(self, name: object) -> bool:
        return name in self._providers


def build_registry(providers: Section) -> Registry:
    """Every built-in (with its overrides), then one provider per other ``[providers.NAME]``."""
    built: dict[str, Provider] = {}
    for name, factory in BUILTINS.items():
        built[name] = _with_shared_settings(factory, name, providers.section(name))
    for name, section in providers.sections().items():
        if name not in BUILTINS:
            kind = section.choice("type", tuple(CONFIG_TYPES))
            built[name] = _with_shared_settings(CONFIG_TYPES[kind], name, section)
    return Registry(built)


def _with_shared_settings(factory: ProviderFactory, name: str, section: Section) -> Provider:
    """Read the keys every provider shares (following a CLI's file, ``callers``); the provider reads the rest."""
    follow = FollowSettings(
        enabled=section.flag("follow", True),
        file=section.local_path("file") if "file" in section else None,
        write_back=section.flag("write_back", True),
        prefer="file" if section.choice("prefer", ("login", "file"), "login") == "file" else "login",
    )
    callers = section.text_list("callers") if "callers" in section else None
    for entry in callers or ():
        problem = callers_problem(entry)
        if problem is not None:
            raise section.error("callers", f"{entry!r}: {problem}")
    rest = {key: value for key, value in section.data.items() if key not in SHARED_KEYS}
    provider = factory(name, Section(section.path, rest, section.source))
    provider.follow = follow
    if callers is not None:
        provider.callers = callers
    return provider

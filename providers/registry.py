"""Maps provider names to providers: the built-ins plus what the config adds."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping

from broker.config import Section
from broker.errors import UnknownProvider
from providers.base import Provider
from providers.custom import CustomOAuthProvider

ProviderFactory = Callable[[str, Section], Provider]

CONFIG_TYPES: Mapping[str, ProviderFactory] = {
    "oauth": CustomOAuthProvider.from_config,
}


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


def build_registry(sections: Mapping[str, Section]) -> Registry:
    """One provider per ``[providers.NAME]`` table; its ``type`` picks the factory."""
    providers: dict[str, Provider] = {}
    for name, section in sections.items():
        kind = section.choice("type", tuple(CONFIG_TYPES))
        providers[name] = CONFIG_TYPES[kind](name, section)
    return Registry(providers)

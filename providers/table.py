"""``[providers.NAME]``: the keys many providers share, read in one place.

A provider declares a ``Table``: which shared keys it takes and their defaults, and
the names of its own keys. ``Table.read`` refuses a key the provider does not take
(naming those it does take) before reading any value, then reads the shared keys into
the provider's fields of the same names; the provider reads only its own keys besides.
The keys of every table (following a CLI's file, ``callers``) are the registry's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.providers.endpoints import endpoints_from, overrides
from broker.providers.wire import Wire

from broker.core.sections import Section


class _NotTaken(enum.Enum):
    NOT_TAKEN = enum.auto()


NOT_TAKEN = _NotTaken.NOT_TAKEN
"""A ``Table``'s ``base_url``: the provider has no such key."""


@dataclass(frozen=True)
class Table:
    """The shared keys one provider takes, with its defaults, and its own keys."""

    base_url: str | _NotTaken | None = NOT_TAKEN
    """The default base URL; ``None``: none unless the config gives one."""
    forced_base_url: bool = False
    """The provider derives its base URL (from a token, a project, a host) and a configured ``base_url``
    wins over it: the key sets field ``forced_base_url`` instead, ``None`` by default."""
    description: str | None = None
    """The default description, where the config may change it; ``None``: no such key."""
    proxy: bool = True
    """Whether the provider's outbound requests can go through a ``proxy``."""
    headers: bool = False
    """Whether the config adds ``headers`` served with every token."""
    endpoints: Mapping[str, str] | None = None
    """Fixed default endpoints, each overridable under ``endpoints`` (field ``endpoints``)."""
    endpoint_keys: tuple[str, ...] = ()
    """Endpoints derived at login (from a host): only the URLs the config sets (field ``endpoint_overrides``)."""
    wire: Wire | None = None
    """The official client's facts, corrected by their keys (``providers.wire``)."""
    own: tuple[str, ...] = ()
    """The provider's other keys, which it reads itself."""

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the provider's table may have (but the registry's)."""
        taken = {
            "base_url": self.base_url is not NOT_TAKEN or self.forced_base_url,
            "description": self.description is not None,
            "proxy": self.proxy,
            "headers": self.headers,
            "endpoints": self.endpoints is not None or bool(self.endpoint_keys),
        }
        return (*(key for key, given in taken.items() if given), *(self.wire.keys if self.wire else ()), *self.own)

    def read(self, section: Section) -> dict[str, Any]:
        """The provider's fields the shared keys set, by field name, once no key is unknown."""
        section.check_keys(self.keys)
        fields: dict[str, Any] = {}
        if self.forced_base_url:
            fields["forced_base_url"] = section.url("base_url", None)
        elif self.base_url is not NOT_TAKEN:
            fields["base_url"] = section.url("base_url", self.base_url)
        if self.description is not None:
            fields["description"] = section.text("description", self.description)
        if self.proxy:
            fields["proxy"] = section.optional_text("proxy")
        if self.headers:
            fields["headers"] = section.text_table("headers")
        if self.endpoints is not None:
            fields["endpoints"] = endpoints_from(section, self.endpoints)
        if self.endpoint_keys:
            fields["endpoint_overrides"] = overrides(section, self.endpoint_keys)
        if self.wire is not None:
            fields["wire"] = self.wire.configured(section)
        return fields

"""Where a provider's base URL is reached from here: directly, or through an outbound HTTP proxy."""

from __future__ import annotations

import contextlib

from aiohttp import BasicAuth
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from broker.daemon.proxy.upstream import Route

MAX_KEPT = 256
"""Base URLs remembered; past that the table starts over (a config that names more is no config)."""


class Destinations:
    """Each base URL's route, ``Host`` and path, worked out once: the daemon's environment does not change."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None], tuple[Route, str, str]] = {}

    def of(self, base_url: str, configured: str | None) -> tuple[Route, str, str]:
        """``base_url``'s route (through an HTTP proxy?), ``Host`` and path.

        The proxy comes from the provider's ``proxy``, else ``HTTP(S)_PROXY`` and ``NO_PROXY``
        (aiohttp's reading of them).
        """
        known = self._known.get((base_url, configured))
        if known is None:
            url = URL(base_url.rstrip("/"), encoded=True)
            via: URL | None = None
            auth: BasicAuth | None = None
            if configured:
                via = URL(configured)
            else:
                with contextlib.suppress(LookupError):
                    via, auth = get_env_proxy_for_url(url)
            if len(self._known) >= MAX_KEPT:
                self._known.clear()
            route = Route.of(url, via, auth.encode() if auth is not None else None)
            known = self._known[(base_url, configured)] = (
                route,
                url.host_port_subcomponent or "",
                url.raw_path.rstrip("/"),
            )
        return known

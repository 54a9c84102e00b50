"""broker's settings: every one has a default, every error names file, line and key.

Precedence: environment, then file, then default. The parts live by reason to change:
``broker.core.paths`` (default locations), ``broker.core.toml_source`` (the file's text,
tomllib's parse, the line locator), ``broker.core.sections`` (typed getters that validate
where they read) and ``broker.core.locations`` (the client's socket lookup). This module
builds the daemon's ``Settings`` from them and is the face the other layers import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from broker.core import locations, paths
from broker.core.sections import MISSING, Section, choice_message, dotted, expanded_path, kind_of
from broker.core.toml_source import ConfigSource, env_error, parse, read_source

__all__ = [
    "MISSING",
    "ConfigSource",
    "Section",
    "Settings",
    "default_config_path",
    "default_socket_path",
    "default_state_dir",
    "load_settings",
    "parse",
    "read_source",
    "socket_path_from_env",
]

STORE_BACKENDS = ("auto", "keyring", "file")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROXY_HOSTS = ("127.0.0.1", "::1")
"""The auth proxy listens on loopback only."""
DEFAULT_REFRESH_MARGIN = 60.0
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 10.0
_TOP_LEVEL = {
    "daemon": ("socket", "log_level"),
    "store": ("backend", "state_dir"),
    "refresh": ("margin",),
    "http": ("timeout",),
    "proxy": ("port", "host", "header_timeout", "extra_addresses"),
    "providers": None,  # each provider's keys are checked by the provider itself
}


# --- default locations --------------------------------------------------------------------


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/broker/config.toml`` (``~/.config/broker/config.toml``)."""
    return Path(paths.default_config_path(env))


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/broker`` (``~/.local/state/broker``)."""
    return Path(paths.xdg(env, "XDG_STATE_HOME", ".local/state"), "broker")


def default_socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_RUNTIME_DIR/broker/broker.sock``, else ``/tmp/broker-$UID/broker.sock``."""
    return Path(paths.default_socket_path(env))


# --- loading ------------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str) -> str | None:
    """An environment setting; set-but-empty counts as unset, as shells make it easy to do."""
    return env.get(name) or None


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = _env(env, name)
    if value is None:
        return None
    try:
        return expanded_path(value, env)
    except ValueError as exc:
        raise env_error(name, str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """Everything the daemon reads from the environment and the config file."""

    config_path: Path | None
    """``None`` when no file exists: every setting then has its default."""
    socket_path: Path
    state_dir: Path
    store_backend: str
    log_level: str
    refresh_margin: float
    """Seconds; the refresher uses max(margin, 10 % of the lifetime), at most half the lifetime."""
    root: Section
    providers: dict[str, Section]
    proxy_port: int | None = None
    """The auth proxy's port (0: any free one); ``None``: no proxy."""
    proxy_host: str = "127.0.0.1"
    proxy_header_timeout: float = DEFAULT_HEADER_TIMEOUT
    """Seconds a proxy connection may take to send a request with the proxy key."""
    proxy_extra_addresses: tuple[tuple[str, int | None], ...] = ()
    """Where else the proxy listens (a container bridge's address), each with its port (``None``: the proxy's)."""
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    """Seconds one outbound request (refresh, login step, probe) may take in all."""


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate the whole configuration: environment, then file, then defaults."""
    source = read_source(env)
    root = Section((), parse(source), source)
    root.check_keys(_TOP_LEVEL)
    tables = {name: root.section(name) for name in _TOP_LEVEL}
    for name, keys in _TOP_LEVEL.items():
        if keys is not None:
            tables[name].check_keys(keys)
    daemon, store, providers_table = tables["daemon"], tables["store"], tables["providers"]

    providers = providers_table.sections()
    for name, value in providers_table.data.items():
        if name not in providers:
            raise providers_table.error(
                name, f"must be a table, like [providers.{dotted([name])}] (got {kind_of(value)})"
            )

    # The file is validated in full even where the environment overrides it: a typo
    # should not wait to surface until the variable is unset.
    socket_path = daemon.local_path("socket", default_socket_path(env))
    state_dir = store.local_path("state_dir", default_state_dir(env))
    backend = store.choice("backend", STORE_BACKENDS, "auto")
    env_backend = _env(env, "BROKER_STORE")
    if env_backend is not None:
        if env_backend not in STORE_BACKENDS:
            raise env_error("BROKER_STORE", choice_message(env_backend, STORE_BACKENDS))
        backend = env_backend
    return Settings(
        config_path=source.path,
        socket_path=_env_path(env, "BROKER_SOCKET") or socket_path,
        state_dir=_env_path(env, "BROKER_STATE_DIR") or state_dir,
        store_backend=backend,
        log_level=daemon.choice("log_level", LOG_LEVELS, "info"),
        refresh_margin=tables["refresh"].number("margin", DEFAULT_REFRESH_MARGIN, min=0),
        root=root,
        providers=providers,
        proxy_port=tables["proxy"].integer("port", min=0, max=65535) if "port" in tables["proxy"] else None,
        proxy_host=tables["proxy"].choice("host", PROXY_HOSTS, "127.0.0.1"),
        proxy_header_timeout=tables["proxy"].number("header_timeout", DEFAULT_HEADER_TIMEOUT, min=0.1, max=600),
        proxy_extra_addresses=_extra_addresses(tables["proxy"]),
        http_timeout=tables["http"].number("timeout", DEFAULT_HTTP_TIMEOUT, min=0.1, max=600),
    )


def _extra_addresses(proxy: Section) -> tuple[tuple[str, int | None], ...]:
    """``[proxy] extra_addresses``: IP addresses, each maybe with a port (``ADDR``, ``ADDR:PORT``, ``[V6]:PORT``)."""
    import ipaddress

    addresses: list[tuple[str, int | None]] = []
    for entry in proxy.text_list("extra_addresses"):
        host, port = entry, ""
        if entry.startswith("[") and "]" in entry:
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        try:
            address = ipaddress.ip_address(host)
            number = int(port) if port else None
        except ValueError:
            raise proxy.error("extra_addresses", f"{entry!r} is not an IP address with an optional :PORT") from None
        if address.is_unspecified:
            raise proxy.error(
                "extra_addresses",
                f"{entry!r} would open the proxy to every network: name the container bridge's address "
                "(e.g. 172.17.0.1 for Docker's docker0)",
            )
        if number is not None and not 1 <= number <= 65535:
            raise proxy.error("extra_addresses", f"{entry!r}: the port must be between 1 and 65535")
        if number is None and "port" not in proxy:
            raise proxy.error("extra_addresses", "needs [proxy] port, or a port with each address (ADDR:PORT)")
        addresses.append((str(address), number))
    return tuple(addresses)


def socket_path_from_env(env: Mapping[str, str] = os.environ) -> Path:
    """The daemon's socket as clients find it: ``BROKER_SOCKET``, ``[daemon] socket``, default.

    Only that key is read (``broker.locations``): a mistake elsewhere in the file is the
    daemon's to report, and never stops a client.
    """
    return Path(locations.socket_path(env))

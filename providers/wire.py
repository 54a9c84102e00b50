"""Wire facts: what a built-in provider sends that its upstream may change without notice.

Each built-in declares them once, as data copied from its official client (client id,
scopes, extra authorize parameters, identifying headers, the client's versions), and
``Wire.configured`` lays the user's ``[providers.NAME]`` keys over them, so a provider
that changes its rules is fixed in the config the same day, without a release:

- ``client_id``, ``client_secret``, ``scopes``: replace the default. A client secret here is an
  installed app's, public by design (RFC 8252 §8.5), yet ``broker providers`` does not show it.
- ``authorize_params``, ``headers``, ``token_headers``: tables merged over the default by
  name; an empty string drops a name. ``headers`` are served with the token (they go on
  every API call a client makes); ``token_headers`` go on broker's own requests to the
  token and exchange endpoints (refresh, Copilot's token, GitLab's direct access).
- ``versions``: the official client's versions; values above name them as ``{name}``,
  so one line moves every header that carries a version.

Values may also name the machine as the official clients describe it: ``{os}`` and
``{os_version}`` (as Rust's os_info prints them, ``Debian 12.0.0``), ``{arch}``
(``x86_64``), ``{node_platform}`` and ``{node_arch}`` (Node's ``process.platform`` and
``process.arch``, ``linux`` and ``x64``). A provider that has no such fact (a device
login has no authorize parameters) does not take its key.
"""

from __future__ import annotations

import functools
import platform
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from broker.core.config import Section

TABLES = ("authorize_params", "headers", "token_headers")
FACTS = ("client_id", "client_secret", "scopes", *TABLES)
NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64", "i386": "ia32", "i686": "ia32"}
NODE_PLATFORM = {"darwin": "darwin", "win32": "win32", "cygwin": "win32"}
MACOS_NAME = "Mac OS"


@dataclass(frozen=True)
class Wire:
    """One provider's facts; ``None`` means the provider has no such fact (and no such key)."""

    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] | None = None
    authorize_params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    token_headers: Mapping[str, str] | None = None
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """The config keys this provider takes for its wire facts."""
        present = [name for name in FACTS if getattr(self, name) is not None]
        return (*present, "versions") if self.versions else tuple(present)

    def configured(self, section: Section) -> Wire:
        """The defaults with ``section``'s overrides, every ``{name}`` filled in."""
        versions = dict(self.versions)
        if "versions" in section:
            section.section("versions").check_keys(self.versions)
            versions.update(section.text_table("versions"))
        values = {**platform_facts(), **versions}
        return replace(
            self,
            client_id=section.text("client_id", self.client_id) if self.client_id is not None else None,
            client_secret=section.text("client_secret", self.client_secret) if self.client_secret is not None else None,
            scopes=section.text_list("scopes", self.scopes) if self.scopes is not None else None,
            authorize_params=_merged(section, "authorize_params", self.authorize_params, values),
            headers=_merged(section, "headers", self.headers, values),
            token_headers=_merged(section, "token_headers", self.token_headers, values),
            versions=versions,
        )

    def describe(self) -> dict[str, Any]:
        """The effective facts, as ``broker providers --json`` shows them (but a client secret, even a public one)."""
        shown: dict[str, Any] = {}
        for name in self.keys:
            if name == "client_secret":
                continue
            value = getattr(self, name)
            shown[name] = value if isinstance(value, str) else list(value) if isinstance(value, tuple) else dict(value)
        return shown


def _merged(
    section: Section, key: str, default: Mapping[str, str] | None, values: Mapping[str, str]
) -> dict[str, str] | None:
    if default is None:
        return None
    given = section.text_table(key) if key in section else {}
    merged = {name: value for name, value in {**default, **given}.items() if value}
    table = section.section(key)
    for name, value in merged.items():
        try:
            merged[name] = fill(value, values)
        except KeyError as exc:
            raise table.error(
                name,
                f"names {{{exc.args[0]}}}, which is no version or machine fact "
                f"(known: {', '.join('{' + k + '}' for k in sorted(values))})",
            ) from None
        except ValueError:
            raise table.error(name, "has a { or } that opens or closes no {name}") from None
        if any(char in merged[name] for char in "\r\n\0"):
            raise table.error(name, "must be one line")
    return merged


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` replaced; KeyError names an unknown one."""
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(values[name])
    return "".join(parts)


@functools.cache
def platform_facts() -> dict[str, str]:
    """This machine as Codex (os_info) and Node clients (Qwen Code) describe it."""
    machine = platform.machine() or "unknown"
    os_name, os_version = _os_info()
    return {
        "os": os_name,
        "os_version": os_version,
        "arch": machine,
        "node_platform": NODE_PLATFORM.get(sys.platform, sys.platform.rstrip("0123456789") or "linux"),
        "node_arch": NODE_ARCH.get(machine.lower(), machine.lower()),
    }


def _os_info() -> tuple[str, str]:
    """os_info's ``os_type()`` and ``version()``: a distribution name and a three-part version."""
    if sys.platform == "darwin":
        return MACOS_NAME, semantic(platform.mac_ver()[0])
    if sys.platform.startswith("linux"):
        try:
            release = platform.freedesktop_os_release()
        except OSError:
            release = {}
        name = release.get("ID", "")
        if name:
            return name[:1].upper() + name[1:], semantic(release.get("VERSION_ID", ""))
        return "Linux", semantic(platform.release().split("-", 1)[0])
    return platform.system() or "Unknown", semantic(platform.release())


def semantic(version: str) -> str:
    """``12`` -> ``12.0.0``, ``22.04`` -> ``22.4.0``: how os_info prints a version it could parse."""
    parts = version.split(".")
    if not version or not all(part.isdigit() for part in parts):
        return version or "Unknown"
    numbers = [str(int(part)) for part in parts[:3]]
    return ".".join(numbers + ["0"] * (3 - len(numbers)))

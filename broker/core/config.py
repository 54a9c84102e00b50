"""broker's TOML configuration: every setting has a default, every error names file, line and key.

tomllib gives positions only for syntax errors, so semantic errors are placed by a small
best-effort scan of the source text (``ConfigSource.line_of``). Values read through a
``Section`` getter are validated where they are read, and a bad one becomes
``PATH:LINE: dotted.key: what is wrong``. Precedence: environment, then file, then default.

Stdlib only, and tomllib, difflib and urllib are imported when first needed: the fast
``broker token`` path imports this module to find the socket.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from broker.core import locations
from broker.core.errors import ConfigError

__all__ = [
    "MISSING",
    "ConfigSource",
    "Section",
    "Settings",
    "default_config_path",
    "default_socket_path",
    "default_state_dir",
    "load_settings",
    "socket_path_from_env",
]

STORE_BACKENDS = ("auto", "keyring", "file")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROXY_HOSTS = ("127.0.0.1", "::1")
"""The auth proxy listens on loopback only."""
DEFAULT_REFRESH_MARGIN = 60.0
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 10.0
FILE_HINT = "fix the file, or point BROKER_CONFIG at another one"
_TOP_LEVEL = {
    "daemon": ("socket", "log_level"),
    "store": ("backend", "state_dir"),
    "refresh": ("margin",),
    "http": ("timeout",),
    "proxy": ("port", "host", "header_timeout", "extra_addresses"),
    "providers": None,  # each provider's keys are checked by the provider itself
}


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING
"""Default of the ``Section`` getters: the key is required."""


# --- where things are -------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigSource:
    """The text a configuration came from, to point errors at a line of it."""

    path: Path | None
    """``None`` when no config file exists and every setting is a default."""
    text: str
    env: Mapping[str, str] | None = field(default=None, compare=False, repr=False)
    """Expands ``$VARS`` and ``~`` in path values; ``None`` means ``os.environ``."""

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    @property
    def name(self) -> str:
        """The path as a person reads it: ``~/.config/broker/config.toml``."""
        if self.path is None:
            return "(no config file)"
        home = self.environ.get("HOME") or os.path.expanduser("~")
        text = str(self.path)
        if home not in ("", "/") and text.startswith(home.rstrip("/") + "/"):
            return "~" + text[len(home.rstrip("/")) :]
        return text

    def where(self, table: tuple[str, ...], key: str | None) -> str:
        """``PATH:LINE`` of a key, or a note that there is no file."""
        if self.path is None:
            return self.name
        return f"{self.name}:{self.line_of(table, key)}"

    def line_of(self, table: tuple[str, ...], key: str | None) -> int:
        """1-based line where ``table.key`` (or the table itself) is defined.

        Falls back to the nearest enclosing table that the text defines, then to line 1.
        """
        target = (*table, key) if key is not None else table
        explicit, implied = self._index
        for size in range(len(target), 0, -1):
            prefix = target[:size]
            offset = explicit.get(prefix, implied.get(prefix))
            if offset is not None:
                return bisect_right(self._newlines, offset - 1) + 1
        return 1

    @functools.cached_property
    def _newlines(self) -> list[int]:
        return [m.start() for m in re.finditer("\n", self.text)]

    @functools.cached_property
    def _index(self) -> tuple[dict[tuple[str, ...], int], dict[tuple[str, ...], int]]:
        scan = _Scan(self.text)
        try:
            scan.document()
        except Exception:  # a locator must never hide the real error; keep what it found
            return scan.explicit, scan.implied
        return scan.explicit, scan.implied


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


class _Scan:
    """Records the offset where each key path is first written (headers, dotted keys,
    inline tables). Tolerant: anything it does not understand skips to the next line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.explicit: dict[tuple[str, ...], int] = {}
        self.implied: dict[tuple[str, ...], int] = {}

    def record(self, path: tuple[str, ...], offset: int) -> None:
        """``path`` is written at ``offset``; its parent tables exist from there on."""
        for size in range(1, len(path)):
            self.implied.setdefault(path[:size], offset)
        self.explicit.setdefault(path, offset)

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip_space(self, *, newlines: bool = False) -> None:
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif newlines and c == "#":
                self.skip_line()
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end + 1

    def document(self) -> None:
        table: tuple[str, ...] = ()
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                return
            start = self.i
            if self.peek() == "[":
                self.i += 2 if self.text.startswith("[[", self.i) else 1
                key = self.key()
                if key is not None:
                    table = key
                    self.record(key, start)
            else:
                key = self.key()
                if key is not None and self.peek() == "=":
                    self.i += 1
                    self.record(table + key, start)
                    self.value(table + key)
            self.skip_line()

    def key(self) -> tuple[str, ...] | None:
        parts: list[str] = []
        while True:
            self.skip_space()
            c = self.peek()
            if c == '"' or c == "'":
                parts.append(self.string(c))
            elif c and c in _BARE_KEY:
                start = self.i
                while self.peek() and self.peek() in _BARE_KEY:
                    self.i += 1
                parts.append(self.text[start : self.i])
            else:
                return None
            self.skip_space()
            if self.peek() != ".":
                return tuple(parts)
            self.i += 1

    def string(self, quote: str) -> str:
        """A one-line string at ``self.i``, decoded as well as this scan can."""
        self.i += 1
        out: list[str] = []
        text = self.text
        while self.i < len(text) and text[self.i] not in (quote, "\n"):
            c = text[self.i]
            self.i += 1
            if c == "\\" and quote == '"' and self.i < len(text):
                out.append(self.escape())
            else:
                out.append(c)
        if self.peek() == quote:
            self.i += 1
        return "".join(out)

    def escape(self) -> str:
        c = self.text[self.i]
        self.i += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        width = {"u": 4, "U": 8, "x": 2}.get(c)
        if width is not None:
            digits = self.text[self.i : self.i + width]
            try:
                char = chr(int(digits, 16))
            except ValueError:
                return "\\" + c
            self.i += width
            return char
        return "\\" + c

    def value(self, path: tuple[str, ...] | None) -> None:
        """Skip one value; inside an inline table, record its keys under ``path``."""
        self.skip_space()
        text, c = self.text, self.peek()
        if c == "{":
            self.i += 1
            while self.i < len(text):
                self.skip_space(newlines=True)
                if self.peek() in ("}", ""):
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    continue
                start = self.i
                key = self.key()
                if key is None or self.peek() != "=":
                    return
                self.i += 1
                if path is not None:
                    self.record(path + key, start)
                self.value(None if path is None else path + key)
        elif c == "[":
            self.i += 1
            while self.i < len(text):
                self.skip_space(newlines=True)
                if self.peek() == "]":
                    self.i += 1
                    return
                before = self.i
                if self.peek() == ",":
                    self.i += 1
                else:
                    self.value(None)  # tables in arrays have no path a Section can ask for
                if self.i == before:
                    self.i += 1
        elif text.startswith(('"""', "'''"), self.i):
            delimiter = text[self.i : self.i + 3]
            self.i += 3
            while self.i < len(text) and not text.startswith(delimiter, self.i):
                self.i += 2 if delimiter == '"""' and text[self.i] == "\\" else 1
            self.i += 3
            while self.peek() == delimiter[0]:  # up to two quotes may end the content
                self.i += 1
        elif c == '"' or c == "'":
            self.string(c)
        else:
            while self.i < len(text) and text[self.i] not in ",]}#\n":
                self.i += 1


# --- tables and typed getters -------------------------------------------------------------


_BARE_PART = re.compile(r"[A-Za-z0-9_-]+")


def dotted(path: Iterable[str]) -> str:
    """A key path as TOML would write it: ``providers."my.host".flow``."""
    return ".".join(p if _BARE_PART.fullmatch(p) else _quote(p) for p in path)


def _quote(value: str, limit: int = 80) -> str:
    if len(value) > limit:
        value = value[:limit] + "..."
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped) + '"'


def _kind(value: Any) -> str:
    """What a TOML value is, in words; never the value itself (it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    for types, word in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, types):
            return word
    return "a date/time"


@dataclass(frozen=True)
class Section:
    """A TOML table with typed getters that raise ConfigError pointing at the key."""

    path: tuple[str, ...]
    data: Mapping[str, Any]
    source: ConfigSource

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def error(self, key: str | None, message: str) -> ConfigError:
        """An error at ``key`` of this table (or at the table itself)."""
        label = dotted((*self.path, key) if key is not None else self.path) or "(top level)"
        hint = FILE_HINT if self.source.path is not None else "set it in a config file (see BROKER_CONFIG)"
        return ConfigError(f"{self.source.where(self.path, key)}: {label}: {message}", hint)

    def _get(self, key: str, default: Any, types: tuple[type, ...], kind: str) -> Any:
        if key not in self.data:
            if default is MISSING:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise self.error(key, f"must be {kind} (got {_kind(value)})")
        return value

    def text(self, key: str, default: str | _Missing = MISSING) -> str:
        value: str = self._get(key, default, (str,), "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        value: str | None = self._get(key, None, (str,), "a string")
        return value

    def integer(
        self,
        key: str,
        default: int | _Missing = MISSING,
        *,
        min: int | None = None,
        max: int | None = None,
    ) -> int:
        if key not in self.data and default is not MISSING:
            return default
        value: int = self._get(key, default, (int,), "an integer")
        self._check_range(key, value, min, max)
        return value

    def number(
        self,
        key: str,
        default: float | _Missing = MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> float:
        if key not in self.data and default is not MISSING:
            return default
        value = float(self._get(key, default, (int, float), "a number"))
        if not math.isfinite(value):  # TOML allows inf and nan; no setting of broker means them
            raise self.error(key, f"must be a finite number (got {value})")
        self._check_range(key, value, min, max)
        return value

    def _check_range(
        self,
        key: str,
        value: float,
        low: float | None,
        high: float | None,
    ) -> None:
        if low is not None and high is not None and not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high} (got {value})")
        if low is not None and value < low:
            raise self.error(key, f"must be at least {low} (got {value})")
        if high is not None and value > high:
            raise self.error(key, f"must be at most {high} (got {value})")

    def flag(self, key: str, default: bool | _Missing = MISSING) -> bool:
        value: bool = self._get(key, default, (bool,), "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | _Missing = MISSING) -> str:
        value = self.text(key, default)
        if key in self.data and value not in choices:
            raise self.error(key, _choice_message(value, choices))
        return value

    def text_list(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        """An array of strings. A lone string is refused rather than split: ``["a", "b"]``."""
        if key not in self.data:
            return tuple(default)
        value = self.data[key]
        if not isinstance(value, list):
            raise self.error(key, f'must be an array of strings, like ["a", "b"] (got {_kind(value)})')
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, f"item {index} must be a string (got {_kind(item)})")
        return tuple(value)

    def text_table(self, key: str) -> dict[str, str]:
        """A table of strings, like ``headers = {X-A = "1"}``; missing means empty."""
        table = self.section(key)
        for name, value in table.data.items():
            if not isinstance(value, str):
                raise table.error(name, f"must be a string (got {_kind(value)})")
        return dict(table.data)

    @overload
    def url(self, key: str, default: str | _Missing = MISSING) -> str: ...
    @overload
    def url(self, key: str, default: None) -> str | None: ...
    def url(self, key: str, default: str | _Missing | None = MISSING) -> str | None:
        """An absolute http(s) URL with a host; ``default=None`` makes it optional."""
        value: str | None = self._get(key, default, (str,), "a string")
        if value is not None and key in self.data:
            problem = _url_problem(value)
            if problem:
                raise self.error(key, problem)
        return value

    def local_path(self, key: str, default: str | Path | _Missing = MISSING) -> Path:
        """A filesystem path: ``~`` and ``$VARS`` expanded, absolute after expansion."""
        if key not in self.data and default is not MISSING:
            return Path(default)
        value = self.text(key)
        try:
            return _expand_path(value, self.source.environ)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def section(self, key: str) -> Section:
        """The sub-table ``key``; an absent one is empty, so its getters use their defaults."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table (got {_kind(value)})")
        return Section((*self.path, key), value, self.source)

    def sections(self) -> dict[str, Section]:
        """Every sub-table, in file order (e.g. all ``[providers.*]``)."""
        return {k: Section((*self.path, k), v, self.source) for k, v in self.data.items() if isinstance(v, dict)}

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Refuse keys this table does not know, suggesting the closest known one."""
        known = list(allowed)
        for key in self.data:
            if key not in known:
                import difflib

                close = difflib.get_close_matches(key, known, n=1)
                message = "unknown key" + (f" (did you mean {_quote(close[0])}?)" if close else "")
                exc = self.error(key, message)
                if known:
                    exc.hint = f"known keys here: {', '.join(sorted(known))}; {exc.hint}"
                raise exc


def _choice_message(value: str, choices: Sequence[str]) -> str:
    return f"must be one of {', '.join(_quote(c) for c in choices)} (got {_quote(value, 40)})"


def _url_problem(value: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        shown = value if parts is None or not parts.password else value.replace(parts.password, "***")
        return f"must be an absolute http:// or https:// URL with a host (got {_quote(shown)})"
    return None


def _expand_path(value: str, env: Mapping[str, str]) -> Path:
    """``~`` then ``$VAR``/``${VAR}``; an unset variable is an error, not a literal."""
    return Path(locations.expand_path(value, env))


# --- default locations --------------------------------------------------------------------


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/broker/config.toml`` (``~/.config/broker/config.toml``)."""
    return Path(locations.default_config_path(env))


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/broker`` (``~/.local/state/broker``)."""
    return Path(locations.xdg(env, "XDG_STATE_HOME", ".local/state"), "broker")


def default_socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_RUNTIME_DIR/broker/broker.sock``, else ``/tmp/broker-$UID/broker.sock``."""
    return Path(locations.default_socket_path(env))


# --- loading ------------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str) -> str | None:
    """An environment setting; set-but-empty counts as unset, as shells make it easy to do."""
    return env.get(name) or None


def _env_error(name: str, message: str) -> ConfigError:
    return ConfigError(f"{name}: {message}", f"fix or unset {name}")


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = _env(env, name)
    if value is None:
        return None
    try:
        return _expand_path(value, env)
    except ValueError as exc:
        raise _env_error(name, str(exc)) from None


def read_source(env: Mapping[str, str] = os.environ) -> ConfigSource:
    """The config file's text, or an empty source when there is no file (no file is fine)."""
    name, explicit = locations.config_path(env)
    path = Path(name)
    shown = ConfigSource(path, "", env).name
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise _env_error("BROKER_CONFIG", f"no such file: {shown}") from None
        return ConfigSource(None, "", env)
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror or exc}", FILE_HINT) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{shown}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})", FILE_HINT) from None
    return ConfigSource(path, text, env)


_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def parse(source: ConfigSource) -> dict[str, Any]:
    """tomllib's parse, with its errors turned into ``PATH:LINE: message``."""
    if not source.text:
        return {}
    import tomllib

    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION.search(message)
        if match is None:
            line, detail = 1, message
        elif match.group(1) is None:
            line, detail = source.text.count("\n") + 1, message[: match.start()] + " (at end of file)"
        else:
            line, detail = int(match.group(1)), f"{message[: match.start()]} (column {match.group(2)})"
        raise ConfigError(f"{source.name}:{line}: {detail}", FILE_HINT) from None
    except RecursionError:
        raise ConfigError(f"{source.name}: values are nested too deeply", FILE_HINT) from None


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
                name, f"must be a table, like [providers.{dotted([name])}] (got {_kind(value)})"
            )

    # The file is validated in full even where the environment overrides it: a typo
    # should not wait to surface until the variable is unset.
    socket_path = daemon.local_path("socket", default_socket_path(env))
    state_dir = store.local_path("state_dir", default_state_dir(env))
    backend = store.choice("backend", STORE_BACKENDS, "auto")
    env_backend = _env(env, "BROKER_STORE")
    if env_backend is not None:
        if env_backend not in STORE_BACKENDS:
            raise _env_error("BROKER_STORE", _choice_message(env_backend, STORE_BACKENDS))
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

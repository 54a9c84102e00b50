"""Typed reading of a config table: each getter validates where it reads.

A bad value becomes ``PATH:LINE: dotted.key: what is wrong``, the line found by the
source's locator. Every layer above the core reads its own settings through ``Section``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from broker.core import paths
from broker.core.errors import ConfigError
from broker.core.toml_source import FILE_HINT, ConfigSource


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING
"""Default of the ``Section`` getters: the key is required."""


_BARE_PART = re.compile(r"[A-Za-z0-9_-]+")


def dotted(path: Iterable[str]) -> str:
    """A key path as TOML would write it: ``providers."my.host".flow``."""
    return ".".join(p if _BARE_PART.fullmatch(p) else _quote(p) for p in path)


def _quote(value: str, limit: int = 80) -> str:
    if len(value) > limit:
        value = value[:limit] + "..."
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped) + '"'


def kind_of(value: Any) -> str:
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
            raise self.error(key, f"must be {kind} (got {kind_of(value)})")
        return value

    def text(self, key: str, default: str | _Missing = MISSING) -> str:
        value: str = self._get(key, default, (str,), "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        value: str | None = self._get(key, None, (str,), "a string")
        return value

    def integer(
        self, key: str, default: int | _Missing = MISSING, *, min: int | None = None, max: int | None = None
    ) -> int:
        value: int = self._bounded(key, default, (int,), "an integer", int, min, max)
        return value

    def number(
        self, key: str, default: float | _Missing = MISSING, *, min: float | None = None, max: float | None = None
    ) -> float:
        value: float = self._bounded(key, default, (int, float), "a number", float, min, max)
        return value

    def _bounded(
        self,
        key: str,
        default: Any,
        kinds: tuple[type, ...],
        what: str,
        convert: Callable[[Any], float],
        low: float | None,
        high: float | None,
    ) -> Any:
        """A number of ``kinds`` within ``low``..``high``; the default as given when the key is absent."""
        if key not in self.data and default is not MISSING:
            return default
        value = convert(self._get(key, default, kinds, what))
        if isinstance(value, float) and not math.isfinite(value):  # TOML allows inf and nan; no setting means them
            raise self.error(key, f"must be a finite number (got {value})")
        self._check_range(key, value, low, high)
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
            raise self.error(key, choice_message(value, choices))
        return value

    def text_list(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        """An array of strings. A lone string is refused rather than split: ``["a", "b"]``."""
        if key not in self.data:
            return tuple(default)
        value = self.data[key]
        if not isinstance(value, list):
            raise self.error(key, f'must be an array of strings, like ["a", "b"] (got {kind_of(value)})')
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, f"item {index} must be a string (got {kind_of(item)})")
        return tuple(value)

    def text_table(self, key: str) -> dict[str, str]:
        """A table of strings, like ``headers = {X-A = "1"}``; missing means empty."""
        table = self.section(key)
        for name, value in table.data.items():
            if not isinstance(value, str):
                raise table.error(name, f"must be a string (got {kind_of(value)})")
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
            return expanded_path(value, self.source.environ)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def section(self, key: str) -> Section:
        """The sub-table ``key``; an absent one is empty, so its getters use their defaults."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table (got {kind_of(value)})")
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


def choice_message(value: str, choices: Sequence[str]) -> str:
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


def expanded_path(value: str, env: Mapping[str, str]) -> Path:
    """``~`` then ``$VAR``/``${VAR}``; an unset variable is an error, not a literal."""
    return Path(paths.expand_path(value, env))

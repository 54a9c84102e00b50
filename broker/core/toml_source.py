"""The config file's text, parsed by tomllib, with a locator that puts an error on its line.

tomllib gives positions only for syntax errors, so semantic errors are placed by a small
best-effort scan of the source text (``ConfigSource.line_of``), run only when an error
needs a line. Stdlib only; tomllib is imported when a file is parsed.
"""

from __future__ import annotations

import functools
import os
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core import paths
from broker.core.errors import ConfigError

FILE_HINT = "fix the file, or point BROKER_CONFIG at another one"


def env_error(name: str, message: str) -> ConfigError:
    """A bad environment setting, with how to fix it."""
    return ConfigError(f"{name}: {message}", f"fix or unset {name}")


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


def read_source(env: Mapping[str, str] = os.environ) -> ConfigSource:
    """The config file's text, or an empty source when there is no file (no file is fine)."""
    name, explicit = paths.config_path(env)
    path = Path(name)
    shown = ConfigSource(path, "", env).name
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise env_error("BROKER_CONFIG", f"no such file: {shown}") from None
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

"""The config file's text, parsed by tomllib, with a locator that puts an error on its line.

tomllib gives positions only for syntax errors. A bad value is placed by a small locator
(``ConfigSource.line_of``) that lets tomllib itself say which lines start a statement and
which keys each one writes, so no second TOML reader has to be kept right; it runs only
when an error needs a line. A key inside an inline table is placed on the line its
statement starts on. Stdlib only; tomllib is imported when a file is parsed.
"""

from __future__ import annotations

import functools
import os
import re
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
        for size in range(len(target), 0, -1):
            prefix = target[:size]
            line = self._lines.explicit.get(prefix, self._lines.implied.get(prefix))
            if line is not None:
                return line
        return 1

    @functools.cached_property
    def _lines(self) -> _Lines:
        try:
            return _locate(self.text)
        except Exception:  # a locator must never hide the real error: then no line is known
            return _Lines()


@dataclass
class _Lines:
    """The 1-based line where each key path is first written, and where each table first appears."""

    explicit: dict[tuple[str, ...], int] = field(default_factory=dict)
    implied: dict[tuple[str, ...], int] = field(default_factory=dict)

    def record(self, path: tuple[str, ...], line: int) -> None:
        for size in range(1, len(path)):
            self.implied.setdefault(path[:size], line)
        self.explicit.setdefault(path, line)

    def record_keys(self, table: tuple[str, ...], written: Mapping[str, Any], line: int) -> None:
        """A key/value line: its (dotted) key, and the keys of the inline tables in its value."""
        for key, value in written.items():
            if isinstance(value, dict) and value:
                self.record_keys((*table, key), value, line)
            else:
                self.record((*table, key), line)


def _locate(text: str) -> _Lines:
    """Where the keys of a document are written, with tomllib deciding what is a statement.

    Each line that may start a statement gets a probe header ``[PROBEn]`` before it. Before
    a statement the probe table holds that statement's keys (nothing, for a header); inside
    a multi-line string the probe is text and defines nothing; inside a multi-line array it
    is a syntax error on its own line, and that line is not probed again.
    """
    lines = text.split("\n")
    probe = "_line_"
    while probe in text:
        probe += "_"
    starts = [n for n, line in enumerate(lines) if _may_start_statement(line.lstrip())]
    document = _parse_probed(lines, starts, probe)
    found = _Lines()
    table: tuple[str, ...] = ()
    for n in starts:
        written = document.get(f"{probe}{n}")
        if written:
            found.record_keys(table, written, n + 1)
        elif written is not None:  # an empty probe: a header follows
            table = _header(lines[n])
            found.record(table, n + 1)
    return found


def _parse_probed(lines: list[str], starts: list[int], probe: str) -> dict[str, Any]:
    """The document with probes before ``starts``, less those found inside arrays (dropped from ``starts``)."""
    import tomllib

    while True:
        probed, probe_lines = _with_probes(lines, set(starts), probe)
        try:
            return tomllib.loads(probed)
        except tomllib.TOMLDecodeError as exc:
            position = _POSITION.search(str(exc))
            inside = probe_lines.get(int(position.group(1))) if position and position.group(1) else None
            if inside is None:
                return {}  # the text itself does not parse: no line is known
            starts.remove(inside)


def _may_start_statement(line: str) -> bool:
    return line.startswith("[") or ("=" in line and not line.startswith(("#", "{")))


def _with_probes(lines: list[str], starts: set[int], probe: str) -> tuple[str, dict[int, int]]:
    """The text with a probe header before each line of ``starts``, and which line each probe is on."""
    out: list[str] = []
    probe_lines: dict[int, int] = {}
    for n, line in enumerate(lines):
        if n in starts:
            out.append(f"[{probe}{n}]")
            probe_lines[len(out)] = n
        out.append(line)
    return "\n".join(out), probe_lines


def _header(line: str) -> tuple[str, ...]:
    """The table path of a header line, ``[a."b.c"]`` or ``[[a.b]]``, as tomllib reads it."""
    import tomllib

    node: Any = tomllib.loads(line.strip())
    path: tuple[str, ...] = ()
    while isinstance(node, dict) and len(node) == 1:
        ((key, node),) = node.items()
        path = (*path, key)
    return path


# --- reading and parsing the file ---------------------------------------------------------


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

"""Where broker's files are, found with the standard library alone.

The client's fast path (``broker token``) finds the socket here, so this module imports
only ``os`` (and ``tomllib``, when a config file exists); ``broker.config`` builds the
daemon's settings on the same functions, so daemon and clients agree on every path.

A client needs one setting of the config, ``[daemon] socket``. It parses the file with
tomllib and reads that key alone, so a mistake anywhere else (an unknown key, a bad
value, even a syntax error in another table) never stops ``broker token``: the daemon,
which validates the whole file, says what is wrong. When the file as a whole does not
parse, its top-level lines and its ``[daemon]`` table are parsed on their own.
"""

from __future__ import annotations

import os

from broker.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn


def home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def tilde(value: str, env: Mapping[str, str]) -> str:
    """``~`` and ``~/x`` from ``$HOME`` of ``env``; ``~user`` as the system says."""
    if value == "~" or value.startswith("~/"):
        return home(env) + value[1:]
    return os.path.expanduser(value)


def xdg(env: Mapping[str, str], name: str, fallback: str) -> str:
    """An XDG base directory; relative values are ignored, as the spec says."""
    value = env.get(name, "")
    return value if os.path.isabs(value) else os.path.join(home(env), fallback)


def default_config_path(env: Mapping[str, str]) -> str:
    """``$XDG_CONFIG_HOME/broker/config.toml`` (``~/.config/broker/config.toml``)."""
    return os.path.join(xdg(env, "XDG_CONFIG_HOME", ".config"), "broker", "config.toml")


def config_path(env: Mapping[str, str]) -> tuple[str, bool]:
    """The config file to read, and whether ``BROKER_CONFIG`` named it (then it must exist)."""
    explicit = env.get("BROKER_CONFIG")
    if explicit:
        return os.path.abspath(tilde(explicit, env)), True
    return default_config_path(env), False


def default_socket_path(env: Mapping[str, str]) -> str:
    """``$XDG_RUNTIME_DIR/broker/broker.sock``, else ``/tmp/broker-$UID/broker.sock``.

    Not ``$TMPDIR``: the daemon and every client must agree on the path without talking.
    """
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "broker", "broker.sock")
    return f"/tmp/broker-{os.getuid()}/broker.sock"  # noqa: S108


def expand_path(value: str, env: Mapping[str, str]) -> str:
    """``~``, then ``$VAR`` and ``${VAR}``; an unset variable is an error, not a literal.

    Raises ValueError saying what is wrong. Written without ``re``: the fast path avoids it.
    """
    value = tilde(value, env)
    out, start = [], 0
    while (dollar := value.find("$", start)) >= 0:
        out.append(value[start:dollar])
        name, end = _variable_at(value, dollar)
        if name is None:
            out.append("$")
            start = dollar + 1
            continue
        if not env.get(name):
            raise ValueError(f'${name} is not set (in "{value}")')
        out.append(env[name])
        start = end
    expanded = "".join(out) + value[start:]
    if "\0" in expanded:
        raise ValueError("must not contain a NUL character")
    if not os.path.isabs(expanded):
        raise ValueError(f'must be an absolute path after expanding ~ and $VARS (got "{expanded}")')
    return expanded


def _variable_at(value: str, dollar: int) -> tuple[str | None, int]:
    """The variable named at ``value[dollar]`` (``$NAME`` or ``${NAME}``) and where it ends."""
    if value.startswith("${", dollar):
        close = value.find("}", dollar)
        return (value[dollar + 2 : close], close + 1) if close >= 0 else (None, dollar + 1)
    end = dollar + 1
    while end < len(value) and (value[end].isascii() and (value[end].isalnum() or value[end] == "_")):
        end += 1
    name = value[dollar + 1 : end]
    return (name, end) if name and not name[0].isdigit() else (None, dollar + 1)


def socket_path(env: Mapping[str, str] = os.environ) -> str:
    """Where clients find the daemon: ``$BROKER_SOCKET``, the config's ``[daemon] socket``, the default."""
    explicit = env.get("BROKER_SOCKET")
    if explicit:
        try:
            return expand_path(explicit, env)
        except ValueError as exc:
            raise ConfigError(f"BROKER_SOCKET: {exc}", "fix or unset BROKER_SOCKET") from None
    path, named = config_path(env)
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except (FileNotFoundError, NotADirectoryError):
        if named:
            raise ConfigError(f"BROKER_CONFIG: no such file: {path}", "fix or unset BROKER_CONFIG") from None
        return default_socket_path(env)
    except OSError:
        from broker.config import read_source

        read_source(env)  # says why the file cannot be read, as the daemon would
        raise
    text = raw.decode("utf-8", "replace")  # a bad byte elsewhere is the daemon's to report
    daemon = _daemon_table(text, path, env)
    value = daemon.get("socket") if isinstance(daemon, dict) else None
    if value is None and (daemon is None or isinstance(daemon, dict)):
        return default_socket_path(env)
    if isinstance(value, str):
        try:
            return expand_path(value, env)
        except ValueError:
            pass
    _socket_error(env, path, text, daemon)


def _daemon_table(text: str, path: str, env: Mapping[str, str]) -> Any:
    """The ``daemon`` value of the document, parsed by tomllib; the table alone if the file does not parse."""
    import tomllib

    try:
        return tomllib.loads(text).get("daemon")
    except tomllib.TOMLDecodeError:
        pass
    try:
        return tomllib.loads(_daemon_lines(text)).get("daemon")
    except tomllib.TOMLDecodeError:
        from pathlib import Path

        from broker.config import ConfigSource, parse

        parse(ConfigSource(Path(path), text, env))  # the daemon table itself is broken: the file's first error
        raise


def _daemon_lines(text: str) -> str:
    """The lines before the first table header and those of ``[daemon]`` tables: what can set the socket."""
    kept, keep = [], True
    for line in text.splitlines():
        head = line.split("#", 1)[0].strip()
        if head.startswith("["):  # a table header, well-formed or not
            keep = head.endswith("]") and head[1:-1].strip() in ("daemon", '"daemon"', "'daemon'")
        kept.append(line if keep else "")  # blank lines keep the line numbers
    return "\n".join(kept)


def _socket_error(env: Mapping[str, str], path: str, text: str, daemon: Any) -> NoReturn:
    """Raise the daemon's own error for a bad ``[daemon] socket``: file, line, key and what is wrong."""
    from pathlib import Path

    from broker.config import ConfigSource, Section

    source = ConfigSource(Path(path), text, env)
    Section((), {"daemon": daemon}, source).section("daemon").local_path("socket")
    raise AssertionError("Section.local_path refuses whatever socket_path refused")

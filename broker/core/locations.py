"""Where broker's files are, found with the standard library alone.

The client's fast path (``broker token``) finds the socket here, so this module imports
only ``os`` (and ``tomllib``, when a config file exists and its socket is not remembered);
the paths themselves are ``broker.core.paths``'s, which the daemon's settings use too.

A client needs one setting of the config, ``[daemon] socket``. It parses the file with
tomllib and reads that key alone, so a mistake anywhere else (an unknown key, a bad
value, even a syntax error in another table) never stops ``broker token``: the daemon,
which validates the whole file, says what is wrong. When the file as a whole does not
parse, its top-level lines and its ``[daemon]`` table are parsed on their own.

Importing tomllib (with ``typing``, ``datetime`` and its regexes) costs about 8 ms, a third
of a ``broker token``, and the value changes only when the file does. So the value read is
remembered in ``MEMO`` beside the default socket, with the file's identity (path, device,
inode, size, mtime, ctime); the next client that finds the file unchanged reads the memo
instead. A write gives a file the present as its mtime and ctime: only a write within the
same timestamp tick as the version read could go unseen, so a file is remembered only once
its mtime is ``SETTLED_NS`` old. The memo is read only if it is the user's own (0600, in a
directory nobody else can write to); anything off, and the file is parsed as before.
"""

import os

from broker.core.paths import config_path, default_socket_path, expand_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

MEMO = "socket-from-config.json"
"""Beside the default socket: the config file's ``[daemon] socket`` and the identity of the file it was read from."""
SETTLED_NS = 2_000_000_000
"""How old a config file's mtime must be to be remembered: above any filesystem's timestamp tick (FAT's is 2 s)."""
NOT_REMEMBERED = object()


def socket_path(env: "Mapping[str, str]" = os.environ) -> str:
    """Where clients find the daemon: ``$BROKER_SOCKET``, the config's ``[daemon] socket``, the default."""
    explicit = env.get("BROKER_SOCKET")
    if explicit:
        try:
            return expand_path(explicit, env)
        except ValueError as exc:
            from broker.core.errors import ConfigError

            raise ConfigError(f"BROKER_SOCKET: {exc}", "fix or unset BROKER_SOCKET") from None
    path, named = config_path(env)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if named:
            from broker.core.errors import ConfigError

            raise ConfigError(f"BROKER_CONFIG: no such file: {path}", "fix or unset BROKER_CONFIG") from None
        return default_socket_path(env)
    except OSError as exc:
        _unreadable(env, exc)
    remembered = _recall(env, path, info)
    if remembered is None:
        return default_socket_path(env)
    if isinstance(remembered, str):
        try:
            return expand_path(remembered, env)
        except ValueError:
            pass  # reported in the file's own words below
    return _socket_from_file(env, path)


def _socket_from_file(env: "Mapping[str, str]", path: str) -> str:
    """The socket the config file at ``path`` names, parsed with tomllib, then remembered."""
    import time

    started_ns = time.time_ns()
    try:
        with open(path, "rb") as file:
            raw = file.read()
            info = os.fstat(file.fileno())
    except OSError as exc:
        _unreadable(env, exc)
    text = raw.decode("utf-8", "replace")  # a bad byte elsewhere is the daemon's to report
    daemon, text = _daemon_table(text, path, env)
    value = daemon.get("socket") if isinstance(daemon, dict) else None
    if value is None and (daemon is None or isinstance(daemon, dict)):
        _remember(env, path, info, None, started_ns)
        return default_socket_path(env)
    if isinstance(value, str):
        _remember(env, path, info, value, started_ns)
        try:
            return expand_path(value, env)
        except ValueError:
            pass
    _socket_error(env, path, text, daemon)


def _identity(path: str, info: os.stat_result) -> list[object]:
    return [path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _memo_path(env: "Mapping[str, str]") -> str:
    return os.path.join(os.path.dirname(default_socket_path(env)), MEMO)


def _recall(env: "Mapping[str, str]", path: str, info: os.stat_result) -> object:
    """The remembered ``[daemon] socket`` of the file (a string, or None: not set), else ``NOT_REMEMBERED``."""
    import json

    from broker.core.trust import directory_problem

    memo = _memo_path(env)
    try:
        fd = os.open(memo, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return NOT_REMEMBERED
    try:
        own = os.fstat(fd)
        if own.st_uid != os.getuid() or own.st_mode & 0o077 or directory_problem(os.path.dirname(memo), own.st_uid):
            return NOT_REMEMBERED
        entry = json.loads(os.read(fd, 65536))
    except (OSError, ValueError):
        return NOT_REMEMBERED
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or entry.get("identity") != _identity(path, info):
        return NOT_REMEMBERED
    socket = entry.get("socket")
    return socket if socket is None or isinstance(socket, str) else NOT_REMEMBERED


def _remember(env: "Mapping[str, str]", path: str, info: os.stat_result, socket: str | None, read_at_ns: int) -> None:
    """Keep ``socket`` for the file whose identity ``info`` is, once the file has settled; never raises."""
    import json

    from broker.core.trust import directory_problem

    if info.st_mtime_ns > read_at_ns - SETTLED_NS:
        return
    memo = _memo_path(env)
    directory = os.path.dirname(memo)
    temp = f"{memo}.{os.getpid()}.tmp"
    try:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        if directory_problem(directory, os.getuid()):
            return
        data = json.dumps({"identity": _identity(path, info), "socket": socket}).encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, memo)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass


def _unreadable(env: "Mapping[str, str]", exc: OSError) -> "NoReturn":
    """Raise why the config file cannot be read, as the daemon would say it."""
    from broker.core.toml_source import read_source

    read_source(env)
    raise exc


def _daemon_table(text: str, path: str, env: "Mapping[str, str]") -> "tuple[Any, str]":
    """The ``daemon`` value of the document, and the text it was parsed from.

    That is the file, or its ``[daemon]`` lines alone if the file does not parse: the text
    an error's line is then looked for in (the locator reads only text that parses).
    """
    import tomllib

    try:
        return tomllib.loads(text).get("daemon"), text
    except tomllib.TOMLDecodeError:
        pass
    lines = _daemon_lines(text)
    try:
        return tomllib.loads(lines).get("daemon"), lines
    except tomllib.TOMLDecodeError:
        from pathlib import Path

        from broker.core.toml_source import ConfigSource, parse

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


def _socket_error(env: "Mapping[str, str]", path: str, text: str, daemon: "Any") -> "NoReturn":
    """Raise the daemon's own error for a bad ``[daemon] socket``: file, line, key and what is wrong."""
    from pathlib import Path

    from broker.core.sections import Section
    from broker.core.toml_source import ConfigSource

    source = ConfigSource(Path(path), text, env)
    Section((), {"daemon": daemon}, source).section("daemon").local_path("socket")
    raise AssertionError("Section.local_path refuses whatever socket_path refused")

"""Credential files other CLIs write, as providers declare them.

A provider that can follow a CLI's file returns ``FollowedFile`` specs: where the file
is, how to read a credential out of its JSON, and (for files broker may write) how to
merge refreshed tokens back in without touching anything else. The daemon's
``broker.followed`` does the reading, locking and writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.core.model import Credential

Mode = Literal["lead", "follow", "mint"]
"""``lead``: broker refreshes and writes back; ``follow``: broker only re-reads what the
CLI writes; ``mint``: broker derives short-lived tokens from the file and never writes it
(Copilot's long-lived GitHub token, gcloud's ADC)."""


class FileProblem(Exception):
    """A followed file that cannot be used as it is: says what is wrong, never a secret."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class FollowedFile:
    provider: str
    account: str
    """The account name clients ask for (``?account=``): the CLI's, e.g. ``codex-cli``."""
    path: Path
    cli: str
    """The owning CLI, for people: ``Codex CLI``."""
    parse: Callable[[dict[str, Any]], Credential]
    """The credential in the file's JSON; raises FileProblem when it is unusable."""
    merge: Callable[[dict[str, Any], Credential], dict[str, Any]] | None
    """The file's JSON with refreshed tokens merged in, unknown fields kept; None: never write."""
    mode: Mode
    login_hint: str
    """What a person runs when the CLI's login is dead, e.g. ``run: codex login``."""
    lead: float = 300.0
    """Refresh this long before expiry, earlier than the CLI itself would, so it never has to."""
    refresh_locks: tuple[CliLock, ...] = ()
    """The locks the CLI holds around its whole refresh (re-read, redeem, write): broker holds them too."""
    write_locks: tuple[CliLock, ...] = ()
    """The locks the CLI holds around each write of the file: broker holds them around its write-back."""
    contested_within: float | None = None
    """Seconds before expiry from which the CLI may redeem the refresh token itself, with no lock
    broker can take (Codex: 0, at expiry). ``None``: never at the same moment as broker (its
    refresh lock excludes it, or its refresh tokens do not rotate)."""
    programs: tuple[str, ...] = ()
    """Names of the CLI's processes (``/proc/PID/comm`` or the script run), to find it running."""
    locate: Callable[[Mapping[str, str]], Path] | None = None
    """The file a process of the CLI uses, from that process's environment (its home overrides)."""


LockKind = Literal["create", "mkdir"]


@dataclass(frozen=True)
class CliLock:
    """A lock a CLI takes: by exclusive create of a file (Qwen Code) or by ``mkdir`` (npm proper-lockfile)."""

    path: Path
    kind: LockKind
    stale: float
    """Seconds after which a lock nobody refreshed belongs to a dead process and is broken."""


def home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def file_path(env: Mapping[str, str], variable: str, default_dir: Path, name: str) -> Path:
    """``name`` in ``$VARIABLE`` when the CLI's own override of its directory is set, else in the default."""
    directory = Path(env[variable]).expanduser() if env.get(variable) else default_dir
    return directory / name


def dump_like(original: str, doc: dict[str, Any]) -> bytes:
    """JSON in the original file's style: indented or compact, with its trailing newline."""
    indent = _indent_of(original)
    text = json.dumps(doc, indent=indent, separators=None if indent else (",", ":"), ensure_ascii=False)
    return (text + ("\n" if original.endswith("\n") else "")).encode()


def _indent_of(text: str) -> int | None:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(stripped) < len(line):
            return len(line) - len(stripped)
    return None


def require(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``doc[key]`` of the given JSON type, or a FileProblem naming the field (not its value)."""
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise FileProblem(f"{where}: {key} is missing or not a {kind.__name__}")
    return value

"""Credential files other CLIs write, as the module of each CLI's format describes them.

Each format (``broker.followed.claude``, ``codex``, ...) makes ``FollowedFile`` specs for
a provider: where the file is, how to read a credential out of its JSON, and (for files
broker may write) how to merge refreshed tokens back in without touching anything else.
``broker.followed.files`` does the reading, locking and writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.core.model import Credential
from broker.providers.base import Provider

Mode = Literal["lead", "follow", "mint"]
"""``lead``: broker refreshes and writes back; ``follow``: broker only re-reads what the
CLI writes; ``mint``: broker derives short-lived tokens from the file and never writes it
(Copilot's long-lived GitHub token, gcloud's ADC)."""


Parse = Callable[[dict[str, Any]], Credential]
Merge = Callable[[dict[str, Any], Credential], dict[str, Any]]


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
    parse: Parse
    """The credential in the file's JSON; raises FileProblem when it is unusable."""
    merge: Merge | None
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


@dataclass(frozen=True)
class CliFormat:
    """What a CLI's file is whoever follows it; ``file`` makes the spec of one provider's copy.

    The fields are ``FollowedFile``'s of the same names.
    """

    account: str
    cli: str
    login_hint: str
    merge: Merge | None
    """``None``: broker never writes the file, it mints tokens from it."""
    lead: float = 300.0
    contested_within: float | None = None
    programs: tuple[str, ...] = ()
    locate: Callable[[Mapping[str, str]], Path] | None = None

    def file(
        self,
        provider: Provider,
        path: Path,
        parse: Parse,
        *,
        account: str | None = None,
        refresh_locks: tuple[CliLock, ...] = (),
        write_locks: tuple[CliLock, ...] = (),
    ) -> FollowedFile:
        """The provider's file at ``path``: led, unless its config says ``write_back = false``."""
        mode: Mode = "mint" if self.merge is None else "lead" if provider.follow.write_back else "follow"
        return FollowedFile(
            provider=provider.name,
            account=account or self.account,
            path=path,
            cli=self.cli,
            parse=parse,
            merge=self.merge,
            mode=mode,
            login_hint=self.login_hint,
            lead=self.lead,
            refresh_locks=refresh_locks,
            write_locks=write_locks,
            contested_within=self.contested_within,
            programs=self.programs,
            locate=self.locate,
        )


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


def optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    """``doc[key]`` when it is a non-empty string; anything else counts as absent."""
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


def ms_timestamp(doc: Mapping[str, Any], key: str, label: str) -> float:
    """``doc[key]``, a JavaScript time in milliseconds, as epoch seconds; FileProblem naming ``label`` if not one."""
    value = doc.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FileProblem(f"{label} is missing or not a number")
    return value / 1000

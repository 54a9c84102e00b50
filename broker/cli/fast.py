"""``broker token`` and completion's name lookups, parsed without argparse.

argparse, gettext, locale and shutil cost ~15 ms, a quarter of ``$(broker token x)``.
This reads the common forms, global options anywhere included; anything else (help,
mistakes, other commands) returns None and goes to argparse, which stays the one
definition of the interface (``broker.cli.parser``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

GLOBAL_VALUES = ("--socket", "--config")
TOKEN_VALUES = ("--account", "--min-ttl")


def fast_args(argv: Sequence[str]) -> argparse.Namespace | None:
    found: dict[str, object] = {"socket": None, "config": None, "no_color": False}
    words = _without_globals(argv, found)
    if words is None or not words:
        return None
    if words[0] == "token":
        values = _token(words[1:])
    elif words[0] == "__complete":
        values = {"what": words[1:]}
    else:
        return None
    if values is None:
        return None
    from types import SimpleNamespace

    return SimpleNamespace(command=words[0], **found, **values)  # type: ignore[return-value]


def _without_globals(argv: Sequence[str], found: dict[str, object]) -> list[str] | None:
    """``argv`` with the global options taken out into ``found``; None when one lacks its value."""
    words: list[str] = []
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        name, equals, value = word.partition("=")
        if name in GLOBAL_VALUES:
            if not equals:
                if not rest:
                    return None
                value = rest.pop(0)
            found[name[2:]] = value
        elif word == "--no-color":
            found["no_color"] = True
        else:
            words.append(word)
    return words


def _token(words: list[str]) -> dict[str, object] | None:
    """``NAME [--json] [--account A] [--min-ttl S]`` in any order after NAME."""
    if not words or words[0].startswith("-"):
        return None
    values: dict[str, object] = {"provider": words[0], "json": False, "account": None, "min_ttl": None}
    rest = words[1:]
    while rest:
        flag = rest.pop(0)
        name, equals, value = flag.partition("=")
        if flag == "--json":
            values["json"] = True
            continue
        if name not in TOKEN_VALUES:
            return None
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        if name == "--account":
            values["account"] = value
        else:
            try:
                values["min_ttl"] = float(value)
            except ValueError:
                return None
    return values

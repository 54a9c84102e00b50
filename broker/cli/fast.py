"""``broker token`` and completion's name lookups, parsed without argparse.

argparse, gettext, locale and shutil cost ~15 ms, a quarter of ``$(broker token x)``.
This reads the common forms, global options anywhere included, in one pass as argparse
does; anything else (help, mistakes, other commands, a value that looks like an option)
returns None and goes to argparse, which stays the one definition of the interface
(``broker.cli.parser``). tests/test_cli_fast_path.py checks that whatever this accepts,
argparse reads the same.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

GLOBAL_VALUES = {"--socket": "socket", "--config": "config"}
TOKEN_VALUES = {"--account": "account", "--min-ttl": "min_ttl"}


def fast_args(argv: "Sequence[str]") -> "argparse.Namespace | None":
    found: dict[str, object] = {"socket": None, "config": None, "no_color": False}
    words = list(argv)
    if "__complete" in words[:1]:
        found.update(command="__complete", what=words[1:])
    elif not _read_token(words, found):
        return None
    from types import SimpleNamespace

    return SimpleNamespace(**found)  # type: ignore[return-value]


def _read_token(words: list[str], found: dict[str, object]) -> bool:
    """``[GLOBALS] token [GLOBALS] NAME [--json] [--account A] [--min-ttl S]``, globals anywhere."""
    positional: list[str] = []
    while words:
        word = words.pop(0)
        name, equals, value = word.partition("=")
        key = GLOBAL_VALUES.get(name) or (TOKEN_VALUES.get(name) if positional else None)
        if word == "--no-color":
            found["no_color"] = True
        elif word == "--json" and positional:
            found["json"] = True
        elif key is not None:
            read = value if equals else _separate_value(words)
            if read is None:
                return False
            if key == "min_ttl":  # argparse converts each one given: a bad one is an error, even if another follows
                number = _number(read)
                if number is None:
                    return False
                found[key] = number
            else:
                found[key] = read
        elif word.startswith("-") or len(positional) == 2:
            return False
        elif positional or word == "token":
            positional.append(word)
        else:
            return False
    if len(positional) != 2:
        return False
    found.update(command="token", provider=positional[1])
    found.setdefault("min_ttl", None)
    found.setdefault("json", False)
    found.setdefault("account", None)
    return True


def _number(text: str) -> float | None:
    """``--min-ttl``'s value as argparse's ``type=float`` reads it; None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _separate_value(rest: list[str]) -> str | None:
    """The next word as an option's value; None (argparse decides) when there is none or it looks like an option."""
    if not rest or rest[0].startswith("-"):
        return None
    return rest.pop(0)

"""broker(1), generated from the CLI's argparse parser: ``python -m broker.cli.manpage [--check]``.

The page lives in ``docs/broker.1``; ``tests/test_manpage.py`` fails when it differs from
what the parser says, so an option cannot be added or changed without the page following.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker import __version__
from broker.cli.parser import DESCRIPTION, ENVIRONMENT, EXAMPLES, EXIT_STATUS, PROG, build_parser, subcommands

PAGE = Path(__file__).resolve().parents[2] / "docs" / "broker.1"
FILES = (
    ("~/.config/broker/config.toml", "the config file (TOML); every setting has a default, so none is needed"),
    ("$XDG_RUNTIME_DIR/broker/broker.sock", "the daemon's socket (0600, in a 0700 directory)"),
    ("~/.local/state/broker/", "the file store, its key and the refresh journal"),
    ("~/.config/systemd/user/broker.{socket,service}", "the units broker install-service writes"),
)


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no line starting with a control character."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in escaped.split("\n"))


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return " ".join(formatter.format_help().split())


def _options(parser: argparse.ArgumentParser, *, skip: set[str]) -> list[str]:
    lines = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.help or set(action.option_strings) & skip:
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        names = ", ".join(action.option_strings) or str(action.metavar or action.dest)
        value = "" if not action.option_strings or action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
        if action.choices and action.option_strings:
            value = " {" + ",".join(str(c) for c in action.choices) + "}"
        lines += [".TP", f"\\fB{roff(names)}\\fR{roff(value)}", roff(action.help)]
    return lines


def render() -> str:
    parser = build_parser()
    globals_ = {"--socket", "--config", "--no-color", "-h", "--help"}
    lines = [
        f'.TH BROKER 1 "" "broker {__version__}" "User Commands"',
        ".SH NAME",
        f"{PROG} \\- {roff(DESCRIPTION[0].lower() + DESCRIPTION[1:].rstrip('.'))}",
        ".SH SYNOPSIS",
        ".B broker",
        "[\\fIglobal options\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR] [\\fIarguments\\fR]",
        ".SH DESCRIPTION",
        roff(
            "broker keeps OAuth logins, personal access tokens and API keys of LLM providers fresh "
            "in one daemon per user, and hands them to any tool that asks over a Unix socket. "
            "Every command but serve is a client of that daemon; doctor also works while it is down."
        ),
        ".SH GLOBAL OPTIONS",
        "Accepted before or after the command.",
        *_options(parser, skip=set()),
        ".SH COMMANDS",
    ]
    for name, sub in subcommands(parser).items():
        lines += [
            f".SS {roff('broker ' + name)}",
            f"\\fB{roff(_usage(sub))}\\fR",
            ".PP",
            roff(" ".join((sub.description or "").split())),
            *_options(sub, skip=globals_),
        ]
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    lines += [".SH ENVIRONMENT"]
    for variable, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{roff(variable)}\\fR", roff(meaning)]
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(meaning)]
    lines += [".SH EXAMPLES", ".nf", roff(EXAMPLES.split("\n", 1)[1].rstrip()), ".fi"]
    lines += [
        ".SH SEE ALSO",
        roff("systemctl(1), the README (configuration, providers, socket API), broker help COMMAND"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"{PAGE} is stale: run python -m broker.cli.manpage", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Shell completion scripts, generated from the argparse parser.

Commands, options and fixed choices are written into the script, so they complete
without starting Python. Provider and account names come from the running daemon
(``broker __complete``, one second at most); while it is down, the built-in provider
names the script carries stand in. bash and zsh share one function that picks the
candidates (zsh runs it with ``ksharrays``, so both index words from 0); fish gets
its own declarative ``complete`` lines.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from broker.cli.parser import ACCOUNT, HIDDEN, PROVIDER, subcommands


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    metavar: str | None
    takes_value: bool
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    takes_provider: bool
    positional_choices: tuple[str, ...]


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The top level's options and every command, as the scripts need them."""
    helps = {a.dest: a.help or "" for a in parser._subparsers._group_actions[0]._choices_actions}  # type: ignore[union-attr]
    commands = []
    for name, sub in subcommands(parser).items():
        positionals = [a for a in sub._actions if not a.option_strings]
        choices = tuple(str(c) for a in positionals for c in (a.choices or ()))
        if name == "help":
            choices = tuple(n for n in subcommands(parser) if n != HIDDEN)
        commands.append(
            Command(
                name=name,
                help=helps.get(name, ""),
                options=_options(sub),
                takes_provider=any(a.metavar == PROVIDER for a in positionals),
                positional_choices=choices,
            )
        )
    return _options(parser), tuple(commands)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return tuple(
        Option(
            names=tuple(action.option_strings),
            metavar=action.metavar if isinstance(action.metavar, str) else None,
            takes_value=action.nargs != 0,
            choices=tuple(str(c) for c in action.choices or ()),
            help=action.help or "",
        )
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS
    )


def _value_options(top: tuple[Option, ...], commands: tuple[Command, ...]) -> dict[str, Option]:
    every = [*top, *(option for command in commands for option in command.options)]
    return {name: option for option in every if option.takes_value for name in option.names}


def _positional(command: Command) -> str:
    """The candidates for a command's first argument, as words of a bash array."""
    return "$(_broker_names providers)" if command.takes_provider else _words(command.positional_choices)


def _words(values: list[str] | tuple[str, ...]) -> str:
    return " ".join(shlex.quote(value) for value in values)


def posix_script(parser: argparse.ArgumentParser, builtins: list[str], shell: str) -> str:
    """The bash or zsh script: one candidate function, and each shell's glue."""
    top, commands = describe(parser)
    values = _value_options(top, commands)
    account_options = [name for name, option in values.items() if option.metavar == ACCOUNT]
    file_options = [name for name, option in values.items() if option.metavar == "PATH"]
    choice_cases = "".join(
        f"        {name}) _broker_reply=({_words(option.choices)}); return;;\n"
        for name, option in values.items()
        if option.choices
    )
    free = [
        name for name, option in values.items() if not option.choices and name not in (*account_options, *file_options)
    ]
    option_cases = "".join(
        f"            {command.name}) _broker_reply=({_words([n for o in command.options for n in o.names])});;\n"
        for command in commands
    )
    positional_cases = "".join(
        f'            {command.name}) [ -z "$provider" ] && _broker_reply=({_positional(command)});;\n'
        for command in commands
        if command.takes_provider or command.positional_choices
    )
    visible = [command.name for command in commands if command.name != HIDDEN]
    body = f"""\
# {shell} completion for broker, generated from its parser by: broker completion {shell}
_broker_names() {{  # providers | accounts PROVIDER: from the daemon, else the built-in names
    command broker __complete "$@" 2>/dev/null && return
    [ "$1" = providers ] && printf '%s\\n' {_words(builtins)}
}}

_broker_candidates() {{  # CWORD WORD...: sets _broker_reply (and _broker_files) for the word at CWORD
    local cword=$1 cur prev cmd= provider= i word
    shift
    local -a w
    w=("$@")
    cur=${{w[cword]}}
    prev=${{w[cword-1]}}
    _broker_reply=()
    _broker_files=0
    for ((i = 1; i < cword; i++)); do
        word=${{w[i]}}
        case $word in
            --) break;;
            {"|".join(values)}) ((i++)); continue;;
            -*) continue;;
        esac
        if [ -z "$cmd" ]; then cmd=$word; elif [ -z "$provider" ]; then provider=$word; fi
    done
    case $prev in
        {"|".join(account_options)}) _broker_reply=($(_broker_names accounts "$provider")); return;;
        {"|".join(file_options)}) _broker_files=1; return;;
{choice_cases}        {"|".join(free)}) return;;
    esac
    if [[ $cur == -* ]]; then
        case $cmd in
{option_cases}            *) _broker_reply=({_words([n for o in top for n in o.names])});;
        esac
    elif [ -z "$cmd" ]; then
        _broker_reply=({_words(visible)})
    else
        case $cmd in
{positional_cases}        esac
    fi
}}
"""
    if shell == "bash":
        return (
            body
            + """
_broker() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    _broker_candidates "$COMP_CWORD" "${COMP_WORDS[@]}"
    if ((_broker_files)); then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "${_broker_reply[*]}" -- "$cur"))
    fi
}
complete -o default -F _broker broker
"""
        )
    return (
        body.replace("# zsh completion", "#compdef broker\n# zsh completion", 1)
        + """
_broker() {
    setopt localoptions ksharrays
    _broker_candidates $((CURRENT - 1)) "${words[@]}"
    if ((_broker_files)); then
        _files
    else
        compadd -a _broker_reply
    fi
}
compdef _broker broker
"""
    )


def fish_script(parser: argparse.ArgumentParser, builtins: list[str]) -> str:
    top, commands = describe(parser)
    with_provider = " ".join(c.name for c in commands if c.takes_provider)
    lines = [
        "# fish completion for broker, generated from its parser by: broker completion fish",
        "function __broker_names --description 'providers | accounts PROVIDER: from the daemon, else the built-ins'",
        "    command broker __complete $argv 2>/dev/null; and return",
        f"    test \"$argv[1]\" = providers; and printf '%s\\n' {_words(builtins)}",
        "end",
        "function __broker_words --description 'the command and its provider, options left out'",
        "    set -l words (commandline -opc)",
        "    set -l found",
        "    set -l skip 0",
        "    for word in $words[2..-1]",
        "        if test $skip = 1",
        "            set skip 0",
        "        else if contains -- $word " + _words(list(_value_options(top, commands))),
        "            set skip 1",
        "        else if not string match -q -- '-*' $word",
        "            set -a found $word",
        "        end",
        "    end",
        "    printf '%s\\n' $found",
        "end",
        "function __broker_needs --description 'true when the command is given and its argument is not'",
        "    set -l found (__broker_words)",
        "    test (count $found) -eq 1; and contains -- $found[1] $argv",
        "end",
        "complete -c broker -f",
    ]
    for command in commands:
        if command.name == HIDDEN:
            continue
        lines.append(f"complete -c broker -n __fish_use_subcommand -a {command.name} -d {shlex.quote(command.help)}")
    lines.append(f"complete -c broker -n '__broker_needs {with_provider}' -a '(__broker_names providers)'")
    for command in commands:
        if command.positional_choices:
            choices = shlex.quote(_words(command.positional_choices))
            lines.append(f"complete -c broker -n '__broker_needs {command.name}' -a {choices}")
    for condition, options in (("", top), *((f"__fish_seen_subcommand_from {c.name}", c.options) for c in commands)):
        for option in options:
            lines.append(_fish_option(condition, option))
    return "\n".join(lines) + "\n"


def _fish_option(condition: str, option: Option) -> str:
    parts = ["complete -c broker"]
    if condition:
        parts.append(f"-n {shlex.quote(condition)}")
    for name in option.names:
        parts.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
    if option.takes_value:
        if option.metavar == "PATH":
            parts.append("-r -F")
        elif option.metavar == ACCOUNT:
            parts.append("-x -a '(__broker_names accounts (__broker_words)[2])'")
        elif option.choices:
            parts.append(f"-x -a {shlex.quote(_words(option.choices))}")
        else:
            parts.append("-x")
    parts.append(f"-d {shlex.quote(option.help)}")
    return " ".join(parts)

"""The one definition of broker's command line: help, the man page and completion come from it.

Global options (``--socket``, ``--config``, ``--no-color``) are accepted before or after
the command: each subcommand inherits them with defaults that do not overwrite what
the top level parsed. ``broker token``'s fast path (``broker.cli.fast``) reads the same
options without argparse.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker import __version__

PROG = "broker"
DESCRIPTION = "One daemon keeps every LLM credential fresh; tools fetch them from its socket."
EXAMPLES = """\
examples:
  broker serve                        run the daemon in the foreground
  broker login copilot                sign in (device code or browser, as the provider needs)
  export OPENAI_API_KEY=$(broker token openai)
  broker exec codex -- my-tool ...    run a tool with the provider's variables set
  broker status                       what needs you, and the command that fixes it
  broker doctor                       check the installation, with or without the daemon
"""
EXIT_STATUS = (
    (0, "success"),
    (1, "an error, or (status, doctor) something needs attention"),
    (2, "bad usage or an unknown provider"),
    (3, "a login is required (status: some account needs one)"),
    (69, "no daemon answers on the socket"),
    (74, "the credential store cannot be used"),
    (78, "the configuration is invalid"),
)
ENVIRONMENT = (
    ("BROKER_SOCKET", "the daemon's socket (beats [daemon] socket in the config)"),
    ("BROKER_CONFIG", "the config file (default: $XDG_CONFIG_HOME/broker/config.toml)"),
    ("BROKER_STORE", "the store backend: auto, keyring or file"),
    ("BROKER_STATE_DIR", "where the file store, its key and the refresh journal live"),
    ("NO_COLOR", "set to anything: no colour in human output"),
)
COMMAND_DESCRIPTIONS = {
    "serve": (
        "Run the daemon in the foreground: it serves the socket, keeps every credential fresh and\n"
        "follows other CLIs' credential files. Needs no config file. Under systemd, see install-service."
    ),
    "login": (
        "Sign in to a provider. The daemon runs the login (device code, browser, or a pasted token or\n"
        "key) and keeps the credential; this command shows what to do and waits for the result.\n"
        "Logging in again over a working login asks first on a terminal."
    ),
    "logout": "Forget a credential: the daemon deletes it.",
    "token": (
        "Print a fresh access token, for $(broker token NAME); refreshed first when less than a\n"
        "minute (--min-ttl) is left. --json prints the token with its expiry, base URL and headers."
    ),
    "env": (
        "Print the variables the provider's API style reads (OPENAI_API_KEY, ANTHROPIC_BASE_URL, ...)\n"
        'as export lines, for: eval "$(broker env NAME)".'
    ),
    "exec": (
        "Run COMMAND (default: your shell) with the provider's variables in its environment (never\n"
        "in its argv), and every other provider's credential, base URL and header variable removed.\n"
        "By default the command gets a key of its own on the auth proxy, valid while it runs, so\n"
        "expiring tokens and rotated keys never stop it. It replaces this process, so its exit\n"
        "status is the command's; a command that is not found exits 127, one that cannot run 126."
    ),
    "proxy-key": (
        "Print the auth proxy's key, for clients that cannot run broker env --proxy; --rotate replaces\n"
        "it, and the old key stops working at once (leases of broker exec keep working)."
    ),
    "refresh": (
        "Refresh a credential now, whatever its expiry says (API keys and local servers have nothing to refresh)."
    ),
    "status": (
        "Every credential and every followed CLI file: state, expiry, source, the default account\n"
        "of each provider, and for each problem the command that fixes it. Exits 3 when a\n"
        "login is required, 1 when something else needs you, 0 when all is well."
    ),
    "providers": "The providers the running daemon knows: API style, auth, state and how to log in.",
    "audit": (
        "Which process was handed which token (pid, program and its parents, systemd unit), and\n"
        "every refresh, from the daemon's audit file. Tokens appear only as fingerprints."
    ),
    "doctor": (
        "Check what broker needs: config, socket and its permissions, the daemon, the store and\n"
        "keyring, followed CLI files, the proxy, the clock and the systemd units. Works while the\n"
        "daemon is down; exits 1 when a check fails."
    ),
    "completion": (
        "Print a completion script for bash, zsh or fish. Provider and account names come from\n"
        "the daemon (the built-in names while it is down). For example:\n"
        "  bash: echo 'source <(broker completion bash)' >> ~/.bashrc\n"
        "  zsh:  echo 'source <(broker completion zsh)' >> ~/.zshrc\n"
        "  fish: broker completion fish > ~/.config/fish/completions/broker.fish"
    ),
    "install-service": (
        "Write broker.socket and broker.service into ~/.config/systemd/user for the broker you run\n"
        "this with, and print the command that enables them. Never needs root."
    ),
}
"""What ``broker COMMAND --help`` says first, by command; one missing here says its summary, as a sentence."""
PROVIDER = "PROVIDER"
"""The metavar of every provider argument: completion offers provider names there."""
ACCOUNT = "ACCOUNT"
"""The metavar of every ``--account``: completion offers the provider's accounts there."""
HIDDEN = "__complete"
"""Completion's helper command, for the scripts ``broker completion`` prints; not in the help."""


def exit_status_text() -> str:
    return "exit status:\n" + "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_STATUS)


def global_options(parser: argparse.ArgumentParser, *, inherited: bool) -> None:
    """``--socket``, ``--config``, ``--no-color``; ``inherited``: a command's copy, which sets nothing unless given."""
    group = parser.add_argument_group("global options (before or after the command)")
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if inherited else {}
    group.add_argument(
        "--socket", metavar="PATH", help="the daemon's socket (default: $BROKER_SOCKET, else the config's)", **unset
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        help="the config file (default: $BROKER_CONFIG, else ~/.config/broker/config.toml)",
        **unset,
    )
    group.add_argument("--no-color", action="store_true", help="no colour, even on a terminal (as NO_COLOR=1)", **unset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EXAMPLES + "\n" + exit_status_text() + "\n\nbroker help COMMAND shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}", help="print the version")
    global_options(parser, inherited=False)
    inherited = argparse.ArgumentParser(add_help=False)
    global_options(inherited, inherited=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", help="what to do")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=COMMAND_DESCRIPTIONS.get(name) or summary[0].upper() + summary[1:] + ".",
            parents=[inherited],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def provider_argument(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("provider", metavar=PROVIDER, help=f"{what} (see: broker providers)")

    def account_option(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--account", metavar=ACCOUNT, help=what)

    def json_option(sub: argparse.ArgumentParser, what: str = "print JSON instead of text") -> None:
        sub.add_argument("--json", action="store_true", help=what)

    default_account = "the account to use (default: the provider's default account, see: broker status)"

    serve = command("serve", "run the daemon in the foreground")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="how much to log (default: the config's)"
    )
    serve.add_argument("--proxy-port", type=int, metavar="PORT", help="run the auth proxy on 127.0.0.1:PORT (0: any)")

    login = command("login", "sign in to a provider (the daemon runs the flow)")
    provider_argument(login, "the provider to sign in to")
    account_option(login, "name this login (default: the account the provider reports)")
    login.add_argument("--flow", metavar="FLOW", help="a login flow the provider offers, e.g. pkce or device")
    login.add_argument("--device", action="store_const", const="device", dest="flow", help="same as --flow device")
    login.add_argument("--no-browser", action="store_true", help="do not open a browser; print the address instead")
    login.add_argument("--enterprise-url", metavar="URL", help="GitHub Enterprise or self-managed GitLab host")
    login.add_argument(
        "--token-stdin", "--key-stdin", action="store_true", help="read the token or API key from standard input"
    )
    login.add_argument("--force", action="store_true", help="replace an existing login without asking")
    json_option(login, "print the daemon's login events, one JSON object a line")

    logout = command("logout", "forget a provider's credential")
    provider_argument(logout, "the provider to log out of")
    account_option(logout, "the account to forget (needed when the provider has several)")
    logout.add_argument("--all", action="store_true", help="forget every account of the provider")

    token = command("token", "print a fresh access token")
    provider_argument(token, "the provider whose token to print")
    account_option(token, default_account)
    token.add_argument("--min-ttl", type=float, metavar="SECONDS", help="refresh first if less is left (default 60)")
    json_option(token, "the whole answer: token, expiry, base_url, api, headers")

    env = command("env", "print export lines for the provider's API style")
    provider_argument(env, "the provider whose variables to print")
    account_option(env, default_account)
    env.add_argument("--proxy", action="store_true", help="the auth proxy's base URL and key instead of the token")
    json_option(env, "print the variables as one JSON object")

    run = command("exec", "run a command (default: your shell) with the provider's variables set, and no others")
    provider_argument(run, "the provider whose variables to set")
    account_option(run, default_account)
    via = run.add_mutually_exclusive_group()
    via.add_argument("--proxy", action="store_true", help="always through the auth proxy (the default when it can)")
    via.add_argument("--direct", action="store_true", help="the token itself, not a key for the auth proxy")
    run.add_argument(
        "argv", nargs="*", metavar="-- COMMAND", help="the command and its arguments, after -- (default: your shell)"
    )

    proxy_key = command("proxy-key", "print the auth proxy's key")
    proxy_key.add_argument("--rotate", action="store_true", help="replace it: the old key stops working at once")

    refresh = command("refresh", "refresh a credential now")
    provider_argument(refresh, "the provider to refresh")
    account_option(refresh, default_account)
    json_option(refresh, "print the account's new state as JSON")

    status = command("status", "every credential and followed file, what needs you and the fix")
    json_option(status, "the same as broker providers --json, with the store (one schema)")

    providers = command("providers", "the providers broker knows and how to log in")
    json_option(providers, "every provider as JSON, in the schema of broker status --json")

    audit = command("audit", "which process was handed which token, and every refresh")
    audit.add_argument("--provider", metavar=PROVIDER, help="only this provider")
    audit.add_argument("--since", metavar="AGE", help="only entries this recent: 90, 45s, 15m, 1h, 2d")
    audit.add_argument("--fingerprint", metavar="FP", help="only this token (sha256:... of the access token)")
    json_option(audit, "print the entries as JSON")

    doctor = command("doctor", "check the installation, with or without the daemon")
    json_option(doctor, "print the checks as JSON")

    completion = command("completion", "print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete in")

    helper = command("help", "show the help of broker or of a command")
    helper.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain")

    service = command("install-service", "write systemd user units for this installation")
    service.add_argument("--uninstall", action="store_true", help="remove the units instead")
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by name, in the order of the help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}

"""Argument parsing and dispatch. Imports a command's module only when it runs.

Client commands stay on the standard library; only ``serve`` loads the daemon.
"""

from __future__ import annotations

import sys

from broker import __version__
from broker.errors import BrokerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

EPILOG = """\
examples:
  broker serve                        run the daemon in the foreground
  broker login acme                   sign in (device code or browser, as the provider needs)
  export OPENAI_API_KEY=$(broker token acme)
  broker exec acme -- my-tool ...     run a tool with the provider's variables set

exit status: 0 ok, 1 error, 2 bad usage or unknown provider, 3 login required,
69 no daemon answers, 74 store error, 78 config error
"""


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="broker",
        description="One daemon keeps every LLM credential fresh; tools fetch them from its socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    parser.add_argument("--socket", metavar="PATH", help="daemon socket (default: $BROKER_SOCKET or the config's)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--proxy-port", type=int, metavar="PORT", help="run the auth proxy on 127.0.0.1:PORT (0: any)")

    login = commands.add_parser("login", help="sign in to a provider (the daemon runs the flow)")
    login.add_argument("provider")
    login.add_argument("--account", help="name this login (default: the account the provider reports)")
    login.add_argument("--flow", help="pick a login flow the provider offers (see: broker providers)")
    login.add_argument("--no-browser", action="store_true", help="do not open a browser; print the URL")
    login.add_argument("--json", action="store_true", help="print one JSON event per line")
    login.add_argument("--device", action="store_const", const="device", dest="flow", help="same as --flow device")
    login.add_argument("--enterprise-url", metavar="URL", help="GitHub Enterprise or self-managed GitLab host")
    login.add_argument(
        "--token-stdin", "--key-stdin", action="store_true", help="read a token or key from standard input"
    )

    logout = commands.add_parser("logout", help="forget a provider's credential")
    logout.add_argument("provider")
    logout.add_argument("--account")
    logout.add_argument("--all", action="store_true", help="every account of the provider")

    token = commands.add_parser("token", help="print a fresh access token")
    token.add_argument("provider")
    token.add_argument("--account")
    token.add_argument("--min-ttl", type=float, metavar="SECONDS", help="refresh first if less is left (default 60)")
    token.add_argument("--json", action="store_true", help="the whole object: token, expiry, base_url, api, headers")

    env = commands.add_parser("env", help="print export lines for the provider's API style")
    env.add_argument("provider")
    env.add_argument("--account")
    env.add_argument("--json", action="store_true")
    env.add_argument("--proxy", action="store_true", help="the auth proxy's base URL and key instead of the token")

    run = commands.add_parser("exec", help="run a command with the provider's variables set")
    run.add_argument("provider")
    run.add_argument("--account")
    run.add_argument("--proxy", action="store_true", help="point the command at the auth proxy")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    refresh = commands.add_parser("refresh", help="refresh a credential now")
    refresh.add_argument("provider")
    refresh.add_argument("--account")
    refresh.add_argument("--json", action="store_true")

    status = commands.add_parser("status", help="every credential: state, expiry, source, last error")
    status.add_argument("--json", action="store_true")

    providers = commands.add_parser("providers", help="the providers broker knows and how to log in")
    providers.add_argument("--json", action="store_true")

    audit = commands.add_parser("audit", help="which process was handed which token, and every refresh")
    audit.add_argument("--provider", metavar="NAME", help="only this provider")
    audit.add_argument("--since", metavar="AGE", help="only entries this recent: 90, 45s, 15m, 1h, 2d")
    audit.add_argument("--fingerprint", metavar="FP", help="only this token (sha256:... of the access token)")
    audit.add_argument("--json", action="store_true")

    service = commands.add_parser("install-service", help="write systemd user units for this installation")
    service.add_argument("--uninstall", action="store_true", help="remove the units instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = fast_token_args(argv) or build_parser().parse_args(argv)
    module = __import__(f"broker.cli.cmd_{args.command.replace('-', '_')}", fromlist=["run"])
    try:
        status: int = module.run(args)
        return status
    except BrokerError as exc:
        report(exc)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


def fast_token_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """``token NAME [--json] [--account A] [--min-ttl S]`` without argparse.

    argparse, gettext, locale and shutil cost ~15 ms, a quarter of ``$(broker token x)``.
    Anything else (help, errors, other commands) returns None and goes to argparse,
    which stays the one definition of the interface.
    """
    if len(argv) < 2 or argv[0] != "token" or argv[1].startswith("-"):
        return None
    values: dict[str, object] = {"json": False, "account": None, "min_ttl": None}
    rest = list(argv[2:])
    while rest:
        flag = rest.pop(0)
        if flag == "--json":
            values["json"] = True
        elif flag in ("--account", "--min-ttl") and rest:
            value = rest.pop(0)
            if flag == "--account":
                values["account"] = value
            else:
                try:
                    values["min_ttl"] = float(value)
                except ValueError:
                    return None
        else:
            return None
    from types import SimpleNamespace

    return SimpleNamespace(command="token", provider=argv[1], socket=None, **values)  # type: ignore[return-value]


def report(exc: BrokerError) -> None:
    """An error for a person: what is wrong, then what to do (no control character reaches the terminal)."""
    from broker.sanitize import printable

    print(f"broker: {printable(exc.code)}: {printable(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"  {printable(exc.hint)}", file=sys.stderr)

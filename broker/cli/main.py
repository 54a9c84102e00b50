"""Dispatch: parse, run one command, and turn whatever happens into a message and an exit status.

Client commands stay on the standard library; only ``serve`` loads the daemon. No
traceback reaches a person: broker's errors print as ``broker: code: message`` with a
hint, a closed pipe (``| head``) ends quietly, Ctrl-C exits 130, and anything else is
reported as a bug in one line (``BROKER_DEBUG=1`` shows the traceback).
"""

import os
import sys

from broker.cli.fast import fast_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn

    from broker.core.errors import BrokerError

MODULES = {"__complete": "complete", "install-service": "install_service", "proxy-key": "proxy_key"}
"""Commands whose module name is not ``cmd_<command>``."""


def entry() -> "NoReturn":
    """The console script and ``python -m broker``: ``main``, then the exit.

    ``broker token`` and completion's lookups leave through ``os._exit`` once their output
    is flushed: they hold no file, thread or exit handler, and Python's teardown of its
    modules (~3 ms) would be an eighth of every ``$(broker token x)``. Every other command
    exits as usual.
    """
    argv = sys.argv[1:]
    status = main(argv)
    if fast_args(argv) is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # main reported what it could; the status says the rest
        os._exit(status)
    sys.exit(status)


def main(argv: "Sequence[str] | None" = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as a shell reports a command that SIGPIPE ended
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        error = _broker_error(exc)
        if error is not None:
            report(error)
            return error.exit_status
        # a bug: say so in one line; the traceback only on request
        if os.environ.get("BROKER_DEBUG"):
            raise
        print(f"broker: internal: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  this is a bug in broker; BROKER_DEBUG=1 shows where", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    args = fast_args(argv) or parse(argv)
    if args.config:
        os.environ["BROKER_CONFIG"] = args.config  # every reader of the config sees it, the daemon's included
    if args.no_color:
        os.environ["NO_COLOR"] = "1"
    if args.command is None:
        from broker.cli.parser import build_parser

        sys.stdout.write(build_parser().format_help())
        return 0
    name = MODULES.get(args.command, args.command)
    module = __import__(f"broker.cli.cmd_{name}", fromlist=["run"])
    status: int = module.run(args)
    return status


def parse(argv: list[str]) -> "argparse.Namespace":
    """argparse, with ``exec``'s command split off at the first ``--`` (argparse mishandles it in a subcommand)."""
    from broker.cli.parser import build_parser

    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if args.command == "exec":
            args.argv = [*args.argv, *argv[cut + 1 :]]
            return args
    return parser.parse_args(argv)


def _broker_error(exc: Exception) -> "BrokerError | None":
    """``exc`` if it is one of broker's errors.

    ``broker.errors`` is imported where an error is raised, not before: its classes
    cost about 3% of a ``broker token``. While it is not loaded, no exception can be
    one of them.
    """
    if "broker.core.errors" not in sys.modules:
        return None
    from broker.core.errors import BrokerError

    return exc if isinstance(exc, BrokerError) else None


def report(exc: "BrokerError") -> None:
    """An error for a person: what is wrong, then what to do (no control character reaches the terminal)."""
    from broker.cli.style import paint
    from broker.core.sanitize import printable

    print(f"{paint('broker:', 'error', sys.stderr)} {printable(exc.code)}: {printable(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"  {printable(exc.hint)}", file=sys.stderr)


def _silence_stdout() -> None:
    """After a reader went away: point stdout at /dev/null so the interpreter's last flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

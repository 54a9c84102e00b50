"""``broker serve`` as a process: signals, logging, the open-files limit, the event loop's errors.

SIGTERM and SIGINT stop the daemon gracefully, SIGHUP reloads its config.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from typing import Any

from broker.core.config import Settings
from broker.core.errors import BrokerError
from broker.core.sanitize import printable
from broker.daemon.log_throttle import Throttle, ThrottleFilter
from broker.daemon.main import Daemon

log = logging.getLogger("broker.daemon")


async def run(settings: Settings) -> int:
    """``broker serve``: run until SIGTERM or SIGINT."""
    raise_file_limit()
    daemon = Daemon(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_error)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except BrokerError as exc:
        log.error("cannot start: %s", exc.message)
        if exc.hint:
            log.error("hint: %s", exc.hint)
        return exc.exit_status
    await stop.wait()
    await daemon.stop()
    return 0


MAX_OPEN_FILES = 65536


def raise_file_limit() -> None:
    """The soft open-files limit up to the hard one (at most ``MAX_OPEN_FILES``).

    systemd and most shells start processes with a soft limit of 1024: a thousand idle
    connections (any local user can open them to the proxy) would use them all, and then
    the owner's socket could accept no one. Raising the soft limit needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_accept_failures = Throttle(limit=1)


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio reports a failed accept() once per backlog slot, each with a traceback: one line will do."""
    exc = context.get("exception")
    if context.get("message") != "socket.accept() out of system resource" or not isinstance(exc, OSError):
        loop.default_exception_handler(context)
        return
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    message = "cannot accept connections: %s (open files limit %d); new ones wait until some close"
    _accept_failures.log(log, logging.ERROR, message, exc.strerror or exc, limit)


def configure_logging(level: str) -> None:
    """One line per event on stderr; journald adds the time when systemd runs us."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_one_printable_line)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(
        logging.INFO
    )  # a line per inotify event: a log beside a watched file feeds itself
    logging.getLogger("aiohttp.server").addFilter(_no_request_dumps)
    logging.getLogger("aiohttp.server").addFilter(ThrottleFilter())  # anyone may send malformed requests


def _one_printable_line(record: logging.LogRecord) -> bool:
    """A message quoting outside text (an account name an upstream chose) cannot forge lines or escapes."""
    message = record.getMessage()
    cleaned = printable(message)
    if cleaned is not message:
        record.msg, record.args = cleaned, None
    return True


def _no_request_dumps(record: logging.LogRecord) -> bool:
    """aiohttp logs a malformed request with a traceback quoting its bytes, which may hold a secret."""
    if record.exc_info and record.exc_info[1] is not None:
        record.msg, record.args = "refused a malformed request (%s)", (type(record.exc_info[1]).__name__,)
        record.exc_info, record.exc_text = None, None
    return True

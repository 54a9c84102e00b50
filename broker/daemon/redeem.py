"""``python -m broker.daemon.redeem``: send one token request, journal its answer, then hand it over.

The daemon runs this for each POST of a refresh (``broker.journal``). It reads its order
as JSON on stdin (never argv: the order holds a refresh token and the journal key),
inherits the journal's lock, held until it exits, and ignores SIGTERM/SIGINT/SIGHUP so that a
stopping daemon cannot cut the one request short that may spend a refresh token. Its
answer goes to stdout as JSON; nothing goes to stderr, so no token can leak there. It marks
the journal just before sending (a request that may have gone out), and an answer it
cannot journal (a full disk, a read-only state dir) is handed over all the same.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from broker.daemon.journal import Journal
from broker.flows.errors import TransportError
from broker.flows.http import HttpClient, new_session


async def send(order: dict[str, Any]) -> dict[str, Any]:
    async with new_session() as session:
        http = HttpClient(session, proxy=order["proxy"], headers=order["headers"], timeout=order["timeout"])
        try:
            response = await http.request(
                order["method"], order["url"], form=order["form"], json_body=order["json_body"]
            )
        except TransportError as exc:
            return {
                "transport_error": str(exc),
                "status": exc.status,
                "retry_after": exc.retry_after,
                "maybe_delivered": exc.maybe_delivered,
            }
    return {
        "status": response.status,
        "headers": dict(response.headers),
        "text": response.text,
        "url": response.url,
        "digest": order["digest"],
    }


def main() -> int:
    for name in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(name, signal.SIG_IGN)
    order = json.loads(sys.stdin.buffer.read())
    path = Path(order["journal"])
    journal = Journal(path, path.with_suffix(".lock"), base64.b64decode(order["key"]))
    with contextlib.suppress(OSError):  # without the mark (a full disk) the request still goes out
        journal.mark_sending()
    answer = asyncio.run(send(order))  # the journal's lock came with the process: it is held until exit
    if "transport_error" not in answer:
        try:
            journal.write(answer)
        except OSError:
            answer["unjournaled"] = True  # handed over all the same: the upstream has rotated the token
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

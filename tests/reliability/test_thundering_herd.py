"""A thousand clients ask at once for a token that has just expired: one refresh serves them all.

The daemon is a real process with its credential expired (as after a laptop's suspend);
its refresh waits at the upstream's gate while 1,000 connections send their requests
over the real socket. Only then does the upstream answer. Refresh tokens rotate and
are single-use, so a second refresh would not only be counted, it would fail.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.core.model import Credential
from tests.conftest import DaemonProcess
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.reliability.conftest import acme_config, file_store

CLIENTS = 1000
"""Far more than aiohttp's default listen backlog of 128: a Unix socket refuses a non-blocking
connect beyond its backlog with EAGAIN (asyncio reports a lost connection), so the daemon
listens with SOMAXCONN."""


def enough_file_descriptors(needed: int) -> None:
    """Raise this process's (and so the daemon's) soft fd limit for the herd, within the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the hard fd limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def send(socket_path: Path, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and send, as any asyncio client does: a non-blocking connect, failing at once on a full backlog."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=1 << 16)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 answer (``Connection: close``): status and JSON body."""
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n".encode()


async def herd(socket_path: Path, upstream: FaultyUpstream) -> list[tuple[int, dict[str, Any]]]:
    """Open every connection and send every request, then let the upstream answer."""
    sent = await asyncio.gather(*(send(socket_path, get("/v1/token/acme")) for _ in range(CLIENTS)))
    # A request sent after all the others and answered: the daemon accepted every earlier
    # connection (accept is FIFO) and has their requests in hand before the upstream answers.
    probe = await answer(*await send(socket_path, get("/v1/health")))
    assert probe[0] == 200
    assert upstream.counts["refreshed"] == 0, "the refresh was still held when the herd arrived"
    upstream.release()
    return await asyncio.gather(*(answer(reader, writer) for reader, writer in sent))


@pytest.mark.timeout(180)
async def test_a_thousand_requests_for_an_expired_token_cause_one_refresh(daemon: DaemonProcess):
    enough_file_descriptors(CLIENTS * 2 + 256)
    with FaultyUpstream() as upstream:
        access, refresh = upstream.issue()
        now = time.time()
        expired = Credential(
            provider="acme",
            account="alice",
            access_token=access,
            refresh_token=refresh,
            expires_at=now - 1,
            issued_at=now - 3601,
            base_url="https://llm.acme.example/v1",
            api="openai-chat",
        )
        file_store(daemon.state_dir).put(expired)
        daemon.write_config(acme_config(upstream))
        upstream.hold()
        daemon.start()
        upstream.wait_held(1)  # the daemon's own timer found the token expired and asked

        answers = await herd(daemon.socket_path, upstream)

        assert Counter(status for status, _ in answers) == {200: CLIENTS}
        assert upstream.counts["refreshed"] == 1
        assert upstream.requests == 1, "exactly one request reached the upstream"
        assert upstream.counts["reused"] == upstream.counts["unknown"] == 0
        tokens = {body["access_token"] for _, body in answers}
        assert len(tokens) == 1 and access not in tokens, "every client got the one new token"
        (new,) = tokens
        assert upstream.access[new].expires_at > time.time() + 3000
        assert file_store(daemon.state_dir).load()[0].refresh_token in upstream.live

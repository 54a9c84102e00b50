"""Token requests whose answer outlives the daemon: journaled, sealed, before the daemon reads it.

A rotating refresh token is spent the moment the upstream answers. If that answer died
with the daemon, so would the login. So a refresh's requests go through a helper process
(``python -m broker.daemon.redeem``) that the daemon's death does not stop: it sends the request,
seals the answer into this credential's journal (AES-256-GCM, 0600, atomic), and only then
hands it over. A restarted daemon finds the journal of a refresh it did not finish and
replays the answer through the provider's own refresh code, as if it had just arrived.

The journal's key is a broker secret in the store, so the journal is as private as the
store; the journal's lock is held for the helper's whole life, so a restarted daemon
never reads a journal, or redeems a refresh token, while a helper of the last run is at work.

An outcome nobody knows is never retried with the same refresh token: the helper leaves a
mark (``<name>.sending``) just before its request goes out, and a request that may have
reached the upstream without an answer coming back (a timeout, a dropped connection, a
helper killed) raises RefreshUncertain. A helper that cannot journal (a full disk, a
read-only state dir) still hands its answer over: the rotated token must not be lost too.
Each answer carries a digest of its request, so a replay never stands in for another one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.core.atomic import replace_atomically
from broker.core.errors import RefreshUncertain
from broker.core.model import CredentialKey
from broker.daemon import children
from broker.flows.errors import TransportError
from broker.flows.http import HttpClient, HttpResponse, PostBody

SECRET_NAME = "refresh-journal-key"
DIRECTORY = "journal"
_AAD = b"broker-journal/v1"


@dataclass(frozen=True)
class Journaled:
    """An answer from the journal, and the digest of the request it answered."""

    response: HttpResponse
    digest: str


@dataclass(frozen=True)
class Journal:
    """Where one credential's refresh answer is journaled, and the key that seals it."""

    path: Path
    lock: Path
    key: bytes = field(repr=False)

    @classmethod
    def of(cls, state_dir: Path, key: bytes, credential: CredentialKey) -> Journal:
        name = hashlib.sha256("\0".join(credential).encode()).hexdigest()[:24]
        directory = state_dir / DIRECTORY
        return cls(directory / f"{name}.sealed", directory / f"{name}.lock", key)

    @property
    def mark(self) -> Path:
        """Present from just before a request goes out until its outcome is handled."""
        return self.path.with_suffix(".sending")

    def mark_sending(self) -> None:
        """Leave the mark (blocks: creates a file); raises OSError on a full or read-only disk."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.mark, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))

    def was_sending(self) -> bool:
        """Whether a request may have gone out whose outcome was never handled."""
        return self.mark.exists()

    def write(self, answer: Mapping[str, Any]) -> None:
        """Seal ``answer`` (status, headers, text, url) durably (blocks: fsync)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.key).encrypt(nonce, json.dumps(answer).encode(), _AAD)
        replace_atomically(self.path, base64.b64encode(nonce + sealed), 0o600)

    def read(self) -> Journaled | None:
        """The journaled answer; ``None`` when there is none or it cannot be opened."""
        try:
            raw = base64.b64decode(self.path.read_bytes(), validate=True)
            answer = json.loads(AESGCM(self.key).decrypt(raw[:12], raw[12:], _AAD))
            response = HttpResponse(
                status=int(answer["status"]), headers=dict(answer["headers"]), text=answer["text"], url=answer["url"]
            )
            return Journaled(response, str(answer.get("digest", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidTag):
            return None

    def discard(self) -> None:
        """Forget the outcome, mark first: a stop between the two leaves an answer without a mark,
        which a restart replays and finds stale, never a mark without its answer, which reads as
        a request that may have spent the token with no answer (``uncertain``)."""
        self.mark.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """The journal's lock (blocks until free); yields its descriptor, which a helper inherits."""
        self.lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)


class JournaledPosts:
    """A refresh's POSTs, sent by the helper process, which journals each answer first."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def __call__(self, http: HttpClient, url: str, body: PostBody, headers: dict[str, str]) -> HttpResponse:
        plain = _plain(body)
        order = {
            "method": "POST",
            "url": url,
            **plain,
            "digest": request_digest(url, plain),
            "headers": headers,
            "proxy": http.proxy,
            "timeout": http.timeout,
            "journal": str(self.journal.path),
            "key": base64.b64encode(self.journal.key).decode(),
        }
        code, out = await _run_helper(json.dumps(order).encode(), self.journal)
        where = url.split("?", 1)[0]
        try:
            answer = json.loads(out)
        except ValueError:
            journaled = await asyncio.to_thread(self.journal.read)  # it may have died after journaling
            if journaled is not None:
                return journaled.response
            if await asyncio.to_thread(self.journal.was_sending):
                raise uncertain(f"{where}: the refresh helper ended without an answer (exit {code})") from None
            raise TransportError(f"{where}: the refresh helper ended before sending (exit {code})") from None
        if "transport_error" in answer:
            if answer.get("maybe_delivered"):
                raise uncertain(answer["transport_error"])
            raise TransportError(answer["transport_error"], answer.get("status"), answer.get("retry_after"))
        return HttpResponse(status=answer["status"], headers=answer["headers"], text=answer["text"], url=answer["url"])


def uncertain(what: str) -> RefreshUncertain:
    """A request that may have spent the refresh token, with no answer: the refresh token is not sent again."""
    return RefreshUncertain(
        f"{what}; the upstream may have replaced the refresh token, so broker does not send it again by itself",
        "check it once with: broker refresh NAME (a dead login then says so), or log in again",
    )


def _plain(body: PostBody) -> dict[str, Any]:
    """A POST's body as the helper's order carries it."""
    form = body.form
    return {
        "form": form if form is None or isinstance(form, str) else dict(form),
        "json_body": None if body.json_body is None else dict(body.json_body),
    }


def request_digest(url: str, body: Mapping[str, Any]) -> str:
    """What a journaled answer answered: its request's URL and body, hashed (the body holds a token)."""
    return hashlib.sha256(json.dumps([url, body], sort_keys=True).encode()).hexdigest()


class ReplayPost:
    """The journaled answer stands in for a refresh's POST, once."""

    def __init__(self, answer: Journaled) -> None:
        self.answer: Journaled | None = answer

    async def __call__(self, http: HttpClient, url: str, body: PostBody, headers: dict[str, str]) -> HttpResponse:
        answer, self.answer = self.answer, None
        if answer is None or answer.digest != request_digest(url, _plain(body)):
            raise StaleJournal(f"{url.split('?', 1)[0]}: the journaled answer is not for this request")
        return answer.response


class StaleJournal(Exception):
    """The journaled answer answered another request: the credential has moved on since (its new
    tokens were stored before the stop, or a new login replaced it). Nothing is sent instead."""


async def _run_helper(order: bytes, journal: Journal) -> tuple[int, bytes]:
    """Run ``python -m broker.daemon.redeem`` on ``order``; its exit code and output.

    The journal's lock is taken here and handed down (an inherited descriptor): the helper
    holds it from before it exists until it exits, so a restarted daemon cannot read the
    journal, or redeem a token, while the helper might still send one. The helper lives in
    a session of its own, started and waited for by a daemon thread: a daemon that stops or
    dies meanwhile neither kills it nor waits for it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, bytes]] = loop.create_future()

    def run() -> None:
        try:
            with journal.locked() as lock:
                process = subprocess.Popen(
                    children.python_module("broker.daemon.redeem"),
                    cwd=children.CWD,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    pass_fds=(lock,),
                )
            out, _ = process.communicate(order)
            result: tuple[int, bytes] | BaseException = (process.returncode, out)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(_settle, done, result)

    threading.Thread(target=run, name="refresh helper", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[tuple[int, bytes]], result: tuple[int, bytes] | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)

"""The one HTTP transport of every flow: aiohttp, with timeouts and errors mapped.

Outbound requests honour ``HTTPS_PROXY``/``NO_PROXY`` (the session is created with
``trust_env=True``) and an explicit per-provider ``proxy``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from broker.flows.errors import TransportError

DEFAULT_TIMEOUT = 30.0
USER_AGENT = "broker/0.1"
MAX_BODY = 1 << 20
MAX_RETRY_AFTER = 3600.0
"""A longer Retry-After is taken as an hour: broker must not fall silent for days on one header."""


def new_session() -> aiohttp.ClientSession:
    """A session for outbound calls; one per daemon, shared by every flow."""
    return aiohttp.ClientSession(
        trust_env=True,
        timeout=aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT, sock_connect=10),
        headers={"User-Agent": USER_AGENT},
    )


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    text: str = field(repr=False)
    url: str = ""

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or a TransportError that says what came instead."""
        try:
            value = json.loads(self.text)
        except ValueError:
            kind = "an HTML page" if self.text.lstrip()[:1] == "<" else "a non-JSON body"
            raise TransportError(
                f"{self.url} answered HTTP {self.status} with {kind} instead of JSON (a proxy or firewall in the way?)",
                status=self.status,
            ) from None
        if not isinstance(value, dict):
            raise TransportError(f"{self.url} answered with JSON that is not an object", self.status)
        return value

    def retry_after(self) -> float | None:
        """Retry-After in seconds (RFC 9110: delay-seconds or an HTTP-date), at most ``MAX_RETRY_AFTER``.

        A date is measured against the answer's own ``Date``, so a skewed local clock
        does not stretch or cancel the wait.
        """
        value = self.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            when = _http_date(value)
            if when is None:
                return None
            seconds = when - (_http_date(self.headers.get("Date", "")) or time.time())
        return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class PostBody:
    """A POST's body as the caller gave it: a form (encoded, or its fields) or a JSON object."""

    form: str | Mapping[str, str] | None
    json_body: Mapping[str, Any] | None


PostSender = Callable[["HttpClient", str, PostBody, dict[str, str]], Awaitable[HttpResponse]]
"""Sends a POST elsewhere than the network: the client, the URL, the body and every header but defaults."""


class HttpClient:
    """Requests with a bounded time, where every network fault becomes a TransportError."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        posts: PostSender | None = None,
    ) -> None:
        self.session = session
        self.proxy = proxy
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.posts = posts

    def posting_through(self, posts: PostSender) -> HttpClient:
        """This client, but its POSTs go to ``posts``: only a POST can redeem a grant, so a
        refresh's POST can be journaled or replayed while its other requests (discovery, a
        token exchange) go out as before."""
        return HttpClient(self.session, proxy=self.proxy, headers=self.headers, timeout=self.timeout, posts=posts)

    async def request(
        self,
        method: str,
        url: str,
        *,
        form: str | Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        if method == "POST" and self.posts is not None:
            return await self.posts(self, url, PostBody(form, json_body), {**self.headers, **(headers or {})})
        all_headers = {"Accept": "application/json", **self.headers, **(headers or {})}
        data: Any = None
        if form is not None:
            data = form
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                json=json_body,
                headers=all_headers,
                proxy=self.proxy,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                body = await _read_body(response.content)
                return HttpResponse(
                    status=response.status,
                    headers=dict(response.headers),
                    text=body.decode("utf-8", errors="replace"),
                    url=_without_query(url),
                )
        except TimeoutError:
            raise TransportError(
                f"{_without_query(url)} did not answer within {self.timeout:g} s", maybe_delivered=True
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"{_without_query(url)}: {type(exc).__name__}: {exc}",
                maybe_delivered=not isinstance(exc, aiohttp.ClientConnectorError),  # no connection: nothing sent
            ) from None


async def _read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole body, up to MAX_BODY bytes: one ``read(n)`` returns only what has arrived yet."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_BODY and (chunk := await content.read(MAX_BODY - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _without_query(url: str) -> str:
    """URLs in messages lose their query: it can carry codes."""
    return url.split("?", 1)[0]

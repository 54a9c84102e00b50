"""A loopback fake of an LLM API: OpenAI chat completions, Anthropic messages, Azure OpenAI.

Written from the APIs' public references and providers.md:

- OpenAI style: ``POST {prefix}/chat/completions`` and ``GET {prefix}/models`` with
  ``Authorization: Bearer <key>``; a bad key is 401 ``{"error": {"message", "type":
  "invalid_request_error", "code": "invalid_api_key"}}``. ``"stream": true`` answers
  ``text/event-stream``: one ``data: {chat.completion.chunk}`` event per piece, then
  ``data: [DONE]``.
- Anthropic style: ``POST {prefix}/v1/messages`` with ``x-api-key`` (or a bearer token) and
  the ``anthropic-version`` header; errors are ``{"type": "error", "error": {"type", "message"}}``.
- Azure: the OpenAI paths under ``/openai/deployments/{deployment}`` with the ``api-key``
  header and the ``api-version`` query parameter; errors are ``{"error": {"code", "message"}}``.
- No auth (Ollama, vLLM): any or no key is accepted.
- Responses API (``openai`` and ``codex`` styles): ``POST {prefix}/responses``; with
  ``"stream": true`` the events ``response.created``, ``response.output_item.added``,
  ``response.output_text.delta`` per piece, ``response.output_item.done`` and
  ``response.completed`` (with ``usage``), each ``event:`` + ``data:``.
- Codex (ChatGPT's backend, ``style="codex"``): ``POST {prefix}/responses`` with a bearer
  token. As reported from server IPs, a request without Codex's ``originator`` (one of
  OpenAI's first-party names) and a ``User-Agent`` that starts ``<originator>/`` gets
  Cloudflare's 403 challenge page; without the ``version`` header Codex sends
  (``model-provider-info``), 400 ``{"detail": "Unsupported model"}``, as some models are
  reported to resolve only with it.

It is an aiohttp server on 127.0.0.1 in its own thread, with handler cancellation on,
so a client that hangs up mid-stream is observed (``disconnected``) rather than
guessed. With ``gate`` set, a stream waits after each piece until the test calls
``release()``; a test can thus see each piece arrive before the next one is even sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict

CODEX_ORIGINATORS = frozenset({"codex_cli_rs", "codex_vscode", "codex-tui", "codex_exec"})
"""``default_client.rs`` ``is_first_party_originator``, and ``codex_exec``: what the real ``codex exec``
0.171.0 sends on its refresh (tests/test_real_codex_race.py)."""
CLOUDFLARE_PAGE = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf challenge</body></html>"
GATE_TIMEOUT = 10.0
"""A gate left closed this long opens by itself (and is counted), so a broken test fails instead of hanging."""


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    """Case-insensitive, as HTTP header names are."""
    body: Any


@dataclass
class FakeLLM:
    style: str = "openai"
    """``openai``, ``anthropic``, ``azure``, ``codex`` or ``none`` (no auth, like Ollama)."""
    key: str | Callable[[str], bool] = "sk-test-key"
    """The accepted key, or a predicate for keys that change (Copilot tokens)."""
    prefix: str = "/v1"
    required_headers: dict[str, str | None] = field(default_factory=dict)
    """Headers every request must carry: with exactly this value, or with any (``None``)."""
    api_version: str = "2024-10-21"
    chunks: list[str] = field(default_factory=lambda: ["Hel", "lo", " from", " the", " fake"])
    gate: bool = False
    requests: list[Seen] = field(default_factory=list)
    sent: int = 0
    """Stream pieces written so far (across requests)."""
    gate_timeouts: int = 0
    disconnected: threading.Event = field(default_factory=threading.Event)
    """Set when a client went away in the middle of a stream (the handler was cancelled)."""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _released: asyncio.Semaphore | None = None
    _url: str = ""

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("FakeLLM has not been started")
        return self._url

    def start(self) -> Self:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("FakeLLM did not start")
        return self

    async def _listen(self) -> None:
        self._released = asyncio.Semaphore(0)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs for tests -------------------------------------------------------------------------

    def release(self) -> None:
        """Let a gated stream send its next piece."""
        assert self._loop is not None and self._released is not None
        self._loop.call_soon_threadsafe(self._released.release)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # -- the API ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        seen = Seen(request.method, request.path, dict(request.query), CIMultiDict(request.headers), body)
        self.requests.append(seen)
        refused = self._refuse(request)
        if refused is not None:
            return refused
        path = request.path.removeprefix(self.prefix)
        if request.method == "GET" and path == "/models":
            return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        if request.method == "POST" and path == "/chat/completions" and self.style != "anthropic":
            if isinstance(body, dict) and body.get("stream"):
                return await self._stream(request, body)
            return web.json_response(self._completion(body))
        if request.method == "POST" and path == "/v1/messages" and self.style == "anthropic":
            return web.json_response(self._message(body))
        if request.method == "POST" and path == "/responses" and self.style in ("codex", "openai"):
            if isinstance(body, dict) and body.get("stream"):
                return await self._stream_response(request, body)
            return web.json_response(self._response(body))
        return self._error(404, "not_found", f"Invalid URL ({request.method} {request.path})")

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The upstream's own answer to a request without the right key, headers or query."""
        if self.style == "azure":
            if request.query.get("api-version") != self.api_version:
                return self._error(404, "404", "Resource not found (api-version missing or unsupported)")
            presented = request.headers.get("api-key")
        elif self.style == "anthropic":
            presented = request.headers.get("x-api-key") or _bearer(request)
        else:
            presented = _bearer(request)
        if self.style == "codex":
            originator = request.headers.get("originator", "")
            agent = request.headers.get("User-Agent", "")
            if originator not in CODEX_ORIGINATORS or not agent.startswith(originator + "/"):
                return web.Response(status=403, text=CLOUDFLARE_PAGE, content_type="text/html")
            if not request.headers.get("version"):
                return web.json_response({"detail": "Unsupported model"}, status=400)
        if self.style != "none" and not self._accepts(presented):
            return self._error(401, "invalid_api_key", "Incorrect API key provided")
        for name, value in self.required_headers.items():
            if name not in request.headers or value not in (None, request.headers[name]):
                return self._error(400, "missing_header", f"header {name} must be {value or 'present'!r}")
        return None

    def _accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        return self.key(presented) if callable(self.key) else presented == self.key

    def _error(self, status: int, code: str, message: str) -> web.Response:
        if self.style == "anthropic":
            kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
            return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)
        if self.style == "azure":
            return web.json_response({"error": {"code": code, "message": message}}, status=status)
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        return web.json_response({"error": error}, status=status)

    def _completion(self, body: Any) -> dict[str, Any]:
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.chunks)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(self.chunks), "total_tokens": 1 + len(self.chunks)},
        }

    def _response(self, body: Any) -> dict[str, Any]:
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        text = {"type": "output_text", "text": "".join(self.chunks), "annotations": []}
        message = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed", "content": [text]}
        return {"id": "resp_fake", "object": "response", "status": "completed", "model": model, "output": [message]}

    async def _stream_response(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """The Responses API's server-sent events: created, text deltas, the item done, completed."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        whole = self._response(body)
        whole["usage"] = {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(self.chunks),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1 + len(self.chunks),
        }
        [item] = whole["output"]
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": {**whole, "status": "in_progress", "output": []}},
            {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
            *(
                {"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0, "content_index": 0,
                 "delta": piece}
                for piece in self.chunks
            ),
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": whole},
        ]  # fmt: skip
        for number, event in enumerate(events):
            self.sent += 1
            event["sequence_number"] = number
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response

    def _message(self, body: Any) -> dict[str, Any]:
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(self.chunks)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": len(self.chunks)},
        }

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        def finish(index: int) -> str | None:
            """On the last piece: clients that loop until the model stops (opencode) must see it stop."""
            return "stop" if index == len(self.chunks) - 1 else None

        try:
            for index, piece in enumerate(self.chunks):
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", "fake-model"),
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish(index)}],
                }
                self.sent += 1  # counted before it leaves: the client may read it before write() returns
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if self.gate and index < len(self.chunks) - 1:
                    await self._wait_for_release()
            if self.gate:
                await self._wait_for_release()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        return response

    async def _wait_for_release(self) -> None:
        assert self._released is not None
        try:
            async with asyncio.timeout(GATE_TIMEOUT):
                await self._released.acquire()
        except TimeoutError:
            self.gate_timeouts += 1


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value if scheme.lower() == "bearer" and value else None

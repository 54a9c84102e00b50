"""A real HTTP server on an ephemeral 127.0.0.1 port, serving one werkzeug handler from a thread.

The fakes of the upstreams subclass it and implement ``handle``; each request is handled
under ``lock`` so a test's knobs and the server never race.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Self

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response


class _QuietHandler(WSGIRequestHandler):
    timeout = 10

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class LoopbackServer:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._httpd: ThreadedWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._url = ""

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, set by start()."""
        if not self._url:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._url

    def start(self) -> Self:
        httpd = ThreadedWSGIServer("127.0.0.1", 0, self._wsgi, handler=_QuietHandler)
        httpd.daemon_threads = False
        self._url = f"http://127.0.0.1:{httpd.server_port}"
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._httpd, self._thread = httpd, thread
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        thread.join()
        httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            response = self.handle(request)
        return response(environ, start_response)

"""A real HTTP server on an ephemeral 127.0.0.1 port, serving one werkzeug handler from a thread.

The fakes of the upstreams subclass it and implement ``handle``; each request is handled
under ``lock`` so a test's knobs and the server never race.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class QuietHandler(WSGIRequestHandler):
    """No access log; a silent client cannot hold stop() for more than ``timeout`` seconds."""

    timeout = 10

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ServedOnLoopback:
    """The lifecycle every loopback fake shares: serve ``wsgi_app()`` on 127.0.0.1:0 from a thread.

    A mixin without ``__init__``, so dataclass fakes can use it too.
    """

    _httpd: ThreadedWSGIServer | None = None
    _thread: threading.Thread | None = None
    _url: str = ""

    def wsgi_app(self) -> WSGIApplication:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, set by start()."""
        if not self._url:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._url

    def start(self) -> Self:
        httpd = ThreadedWSGIServer("127.0.0.1", 0, self.wsgi_app(), handler=QuietHandler)
        httpd.daemon_threads = False  # so server_close() joins request threads still running
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


class LoopbackServer(ServedOnLoopback):
    """A fake that implements ``handle``; each request is handled under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def wsgi_app(self) -> WSGIApplication:
        return self._wsgi

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            response = self.handle(request)
        return response(environ, start_response)

"""Serve the mini-web's knowledge-base image files over HTTP on 127.0.0.1, so img2dataset downloads for real.

The server reads through :class:`~react_core.storage.Storage`, so a mini-web on S3 is served as well as
one on the local disk. Missing files (the corpus' dead links) answer 404, as on the real web.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pandas as pd

from react_core.storage import Storage, StorageError, join

_logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: img2dataset's 16+ threads per process would see
    # connection timeouts on a busy machine that a real web server does not cause
    request_queue_size = 128


class MiniWebServer:
    """A threaded HTTP server over ``{miniweb_uri}/kb``; use as a context manager or start()/stop().

    Args:
        storage: the storage holding the mini-web.
        miniweb_uri: the mini-web stage URI.
        host: bind address (loopback only by default).
        port: 0 picks a free port.
        before_response: called with each request's path before it is answered, in the request's thread
            (to count, to throttle, to hold requests back as a stalled server would); it returns None to
            answer normally or bytes to answer with instead (a page of HTML served as a JPEG, say).
    """

    def __init__(
        self,
        storage: Storage,
        miniweb_uri: str,
        host: str = "127.0.0.1",
        port: int = 0,
        before_response: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self.storage = storage
        self.before_response = before_response
        self.hangups = 0  # responses the client closed the connection on before they were sent
        self.kb_uri = join(miniweb_uri, "kb")
        if not storage.exists(join(self.kb_uri, "urls.parquet")):
            raise StorageError(
                f"{self.kb_uri}/urls.parquet not found: the mini-web at {miniweb_uri} has no image files; "
                "fix: generate it with miniweb.write_image_files=true"
            )
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = server.before_response(self.path) if server.before_response is not None else None
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                if data is None and (".." in rel.split("/") or not rel.startswith("images/")):
                    self.send_error(404)
                    return
                try:
                    data = data if data is not None else server.storage.read_bytes(join(server.kb_uri, rel))
                except StorageError:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): counted
                    server.hangups += 1
                    _logger.debug("miniweb http: client hung up before %s was sent", rel)

            def log_message(self, fmt: str, *args) -> None:
                _logger.debug("miniweb http: " + fmt, *args)

        self._httpd = _Server((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> MiniWebServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="miniweb-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MiniWebServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def urls(self) -> pd.DataFrame:
        """The knowledge base's ``key, url, caption`` table with absolute URLs on this server."""
        with self.storage.open(join(self.kb_uri, "urls.parquet")) as f:
            df = pd.read_parquet(f)
        df["url"] = self.base_url + df["url"]
        return df

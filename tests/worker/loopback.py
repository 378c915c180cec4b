"""A small threaded HTTP server on a free loopback port that records every connection.

Tests use it as the video source, as a redirector, and as the "internal service" an SSRF
attempt aims at: ``connections`` counts accepted TCP connections, so a refused URL can be shown
to have reached nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[BaseHTTPRequestHandler], None]


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def get_request(self):
        conn = super().get_request()
        with self._lock:
            self.connections += 1
        return conn

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with self.server._lock:
            self.server.requests.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
        route = self.server.routes.get(path)
        if route is None:
            send_bytes(self, b"not found", status=404)
            return
        route(self)

    do_GET = do_POST = do_HEAD = _handle


def send_bytes(
    handler: BaseHTTPRequestHandler,
    data: bytes,
    *,
    status: int = 200,
    content_type: str = "application/octet-stream",
) -> None:
    handler.send_response(status)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


def serve_file(data: bytes, content_type: str = "video/mp4") -> Route:
    return lambda handler: send_bytes(handler, data, content_type=content_type)


def redirect_to(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("location", location)
        handler.send_header("content-length", "0")
        handler.end_headers()

    return route


def stream_without_length(total: int, chunk: int = 65536) -> Route:
    """Sends ``total`` bytes with no Content-Length (connection-delimited body)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "video/mp4")
        handler.send_header("connection", "close")
        handler.end_headers()
        sent = 0
        try:
            while sent < total:
                handler.wfile.write(b"\0" * min(chunk, total - sent))
                sent += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.close_connection = True

    return route


def declared_length(length: int) -> Route:
    """Declares a huge Content-Length and sends only a few bytes."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-length", str(length))
        handler.end_headers()
        handler.wfile.write(b"\0" * 16)
        handler.close_connection = True

    return route


def stall(seconds: float) -> Route:
    """Sends headers then nothing for ``seconds`` (a read timeout)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(seconds)
        handler.close_connection = True

    return route


def status(code: int, body: bytes = b"") -> Route:
    return lambda handler: send_bytes(handler, body, status=code)

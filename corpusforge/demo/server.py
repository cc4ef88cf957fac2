"""A small threaded HTTP server on 127.0.0.1 serving a dict of pages (the demo site, and tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from corpusforge.demo.site import Page


def _handler(pages: dict[str, Page], log: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            log.append(path)
            page = pages.get(path)
            if page is None:
                body, status, ctype, headers = b"<html><body>Not found</body></html>", 404, "text/html", {}
            else:
                body, status, ctype, headers = page.body, page.status, page.content_type, page.headers
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # quiet
            return

    return Handler


@contextmanager
def serve(pages: dict[str, Page], host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, list[str]]]:
    """Serve ``pages`` on ``host`` (loopback only) in a background thread; yields (base URL, access log)."""
    if not host.startswith("127."):
        raise ValueError("the demo server binds loopback addresses only")
    access: list[str] = []
    server = ThreadingHTTPServer((host, port), _handler(pages, access))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/", access
    finally:
        server.shutdown()
        server.server_close()

"""A loopback HTTP server with failure endpoints and an access log, bound to 127.0.0.x (distinct "hosts").

Routes are per host: ``FaultServer(routes)`` where routes maps a path to a handler function
``(handler) -> None`` or to a ``(status, headers, body)`` tuple. Every request is logged with its time,
host, path and headers, so tests can assert what was (not) requested and when.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Hit:
    t: float
    host: str
    path: str
    headers: dict[str, str]


@dataclass
class FaultServer:
    host: str = "127.0.0.1"
    routes: dict[str, Any] = field(default_factory=dict)
    log: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on kept-alive connections

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                server.log.append(
                    Hit(time.monotonic(), server.host, self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                route = server.routes.get(path)
                if route is None:
                    return self.reply(404, {"Content-Type": "text/html"}, b"<html>not found</html>")
                if callable(route):
                    return route(self)
                return self.reply(*route)

            def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def paths(self, *, tdmrep: bool = False) -> list[str]:
        """Request paths in order; the crawler's ``/.well-known/tdmrep.json`` request only with ``tdmrep``."""
        return [h.path for h in self.log if tdmrep or h.path != TDMREP]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TDMREP = "/.well-known/tdmrep.json"  # read once per host by the AI-training opt-out policy


def html(body: str, status: int = 200, **headers: str) -> tuple[int, dict[str, str], bytes]:
    h = {"Content-Type": "text/html; charset=utf-8"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return status, h, f"<html><head><title>t</title></head><body>{body}</body></html>".encode()


def gzip_bomb(decompressed_bytes: int) -> tuple[int, dict[str, str], bytes]:
    body = gzip.compress(b"\0" * decompressed_bytes, compresslevel=9)
    return 200, {"Content-Type": "text/html", "Content-Encoding": "gzip"}, body


def trickle(interval_s: float, total_s: float) -> Callable[[Any], None]:
    def handler(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        end = time.monotonic() + total_s
        try:
            while time.monotonic() < end:
                h.wfile.write(b"<p>x</p>")
                h.wfile.flush()
                time.sleep(interval_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    return handler


def partial_body(h: Any) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Content-Length", "5000")
    h.end_headers()
    h.wfile.write(b"<html><body>only part of the page")
    h.wfile.flush()
    h.close_connection = True


def deflate_bomb(decompressed_bytes: int) -> tuple[int, dict[str, str], bytes]:
    import zlib

    body = zlib.compress(b"\0" * decompressed_bytes, 9)
    return 200, {"Content-Type": "text/html", "Content-Encoding": "deflate"}, body


def brotli_bomb(decompressed_bytes: int) -> tuple[int, dict[str, str], bytes]:
    import brotli

    body = brotli.compress(b"\0" * decompressed_bytes, quality=5)
    return 200, {"Content-Type": "text/html", "Content-Encoding": "br"}, body


def stacked_bomb(decompressed_bytes: int) -> tuple[int, dict[str, str], bytes]:
    """gzip inside gzip: ``Content-Encoding: gzip, gzip``."""
    body = gzip.compress(gzip.compress(b"\0" * decompressed_bytes, compresslevel=9), compresslevel=9)
    return 200, {"Content-Type": "text/html", "Content-Encoding": "gzip, gzip"}, body


def chunked(chunks: Any, *, terminate: bool = True, reset: bool = False) -> Callable[[Any], None]:
    """A chunked body from an iterable of byte strings; ``terminate=False`` ends with a bad chunk size line."""

    def handler(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            for c in chunks():
                h.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n")
                h.wfile.flush()
            if reset:
                import socket
                import struct

                # SO_LINGER 0: close() sends a TCP reset instead of a clean FIN.
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
            elif terminate:
                h.wfile.write(b"0\r\n\r\n")
            else:
                h.wfile.write(b"zz-not-a-size\r\n")
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        h.close_connection = True

    return handler


def endless_chunks(size: int = 64 << 10, max_s: float = 20.0) -> Callable[[], Any]:
    """Chunks forever (bounded at ``max_s`` so a failing test cannot hang the server)."""

    def gen() -> Any:
        end = time.monotonic() + max_s
        block = b"<p>" + b"y" * (size - 7) + b"</p>"
        while time.monotonic() < end:
            yield block

    return gen


def _zeros_zlib(decompressed_bytes: int, *, gzip_format: bool) -> bytes:
    """A zlib (or gzip) stream that inflates to ``decompressed_bytes`` zero bytes, built in a fraction of a second.

    Compressing 1 GiB takes seconds. After a full flush the encoder starts afresh, so each further 16 MiB of
    zeros compresses to the same bytes: the stream is the first piece (with the header), that piece repeated,
    and the final block with a trailer (checksum, size) computed for the whole length.
    """
    import struct
    import zlib

    piece = 16 << 20
    if decompressed_bytes % piece or decompressed_bytes < 2 * piece:
        raise ValueError(f"decompressed_bytes must be a multiple of {piece} (at least two)")
    zeros = bytes(piece)
    enc = zlib.compressobj(9, zlib.DEFLATED, 31 if gzip_format else 15)
    first = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    again = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    end = enc.flush()  # final block + the trailer of the two pieces this encoder saw, replaced below
    check = 0 if gzip_format else 1
    for _ in range(decompressed_bytes // piece):
        check = zlib.crc32(zeros, check) if gzip_format else zlib.adler32(zeros, check)
    if gzip_format:
        trailer, cut = struct.pack("<II", check, decompressed_bytes & 0xFFFFFFFF), 8
    else:
        trailer, cut = struct.pack(">I", check), 4
    return first + again * (decompressed_bytes // piece - 1) + end[:-cut] + trailer


def huge_bomb(encoding: str, decompressed_bytes: int) -> tuple[int, dict[str, str], bytes]:
    """A bomb of ``decompressed_bytes`` zeros (1 GiB and more), cheap to build: ``encoding`` is ``gzip``,
    ``deflate``, ``br`` or ``gzip, gzip`` (stacked). Each compressed body stays under about 1 MiB."""
    import gzip as gz

    if encoding == "br":
        import brotli

        enc = brotli.Compressor(quality=1)  # quality 1: 1 GiB in ~0.05 s, ~200 KiB
        block = bytes(16 << 20)
        body = b"".join(enc.process(block) for _ in range(decompressed_bytes // len(block))) + enc.finish()
    elif encoding == "gzip, gzip":
        body = gz.compress(_zeros_zlib(decompressed_bytes, gzip_format=True), compresslevel=9)
    elif encoding in ("gzip", "deflate"):
        body = _zeros_zlib(decompressed_bytes, gzip_format=encoding == "gzip")
    else:
        raise ValueError(f"unknown encoding {encoding!r}: gzip, deflate, br or 'gzip, gzip'")
    return 200, {"Content-Type": "text/html", "Content-Encoding": encoding}, body


# ---------------------------------------------------------------------------------------------- endless senders
@dataclass
class Feed:
    """What an endless handler did: when it started and stopped, bytes sent, and why it stopped
    (``disconnect``: the client went away; ``time bound``: its own hard limit, so the client never cut it)."""

    started: float = 0.0
    ended: float = 0.0
    sent: int = 0
    why: str = ""


def endless(
    feed: Feed,
    *,
    framing: str,
    max_s: float = 30.0,
    block: bytes = b"<p>" + b"z" * 16377 + b"</p>",
    interval_s: float = 0.0,
) -> Callable[[Any], None]:
    """Sends ``block`` forever, until the client disconnects or ``max_s`` (the server-side hard bound) passes.

    ``framing``: ``chunked`` (Transfer-Encoding), ``length`` (a false ``Content-Length`` of 10 GiB) or
    ``close`` (no length: the body would end when the connection closes). Records into ``feed``.
    """

    def handler(h: Any) -> None:
        feed.started = time.monotonic()
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        if framing == "chunked":
            h.send_header("Transfer-Encoding", "chunked")
        elif framing == "length":
            h.send_header("Content-Length", str(10 << 30))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        piece = f"{len(block):x}\r\n".encode() + block + b"\r\n" if framing == "chunked" else block
        end = feed.started + max_s
        feed.why = "time bound"
        # A client that stops reading without hanging up would block a write forever: bound each write too.
        h.connection.settimeout(1.0)
        try:
            while time.monotonic() < end:
                h.wfile.write(piece)
                h.wfile.flush()
                feed.sent += len(block)
                if interval_s:
                    time.sleep(interval_s)
        except TimeoutError:
            feed.why = "stalled"  # the client neither read nor hung up for 1 s
        except OSError:  # BrokenPipeError, ConnectionResetError: the client hung up
            feed.why = "disconnect"
        feed.ended = time.monotonic()
        h.close_connection = True

    return handler


def false_length_then_close(claimed: int = 10 << 30, sent: bytes = b"<html><body>a little of it") -> Callable:
    """Claims ``claimed`` bytes of body, sends a few, then closes the connection."""

    def handler(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(claimed))
        h.end_headers()
        try:
            h.wfile.write(sent)
            h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True

    return handler


def stall_after_headers(feed: Feed, max_s: float = 30.0) -> Callable[[Any], None]:
    """Sends a 200's headers, then nothing until the client hangs up (or ``max_s``, its own bound)."""

    def handler(h: Any) -> None:
        import select
        import socket

        feed.started = time.monotonic()
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.flush()
        feed.why = "time bound"
        end = feed.started + max_s
        while time.monotonic() < end:
            # Readable with no bytes, or reset: the client hung up.
            try:
                if select.select([h.connection], [], [], 0.05)[0] and not h.connection.recv(1, socket.MSG_PEEK):
                    feed.why = "disconnect"
                    break
            except OSError:
                feed.why = "disconnect"
                break
        feed.ended = time.monotonic()
        h.close_connection = True

    return handler


class SilentServer:
    """Accepts connections and reads the request, and never answers a byte: a hung server. Logs each request
    (``log``: Hit) and, per connection, when the client hung up (``hung_up``: monotonic times). Each connection
    is held at most ``max_s`` seconds, so a failing test cannot hold it forever."""

    def __init__(self, host: str = "127.0.0.1", max_s: float = 30.0) -> None:
        import socket

        self.host, self.max_s = host, max_s
        self.log: list[Hit] = []
        self.hung_up: list[float] = []
        self._stop = threading.Event()
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def paths(self, *, tdmrep: bool = False) -> list[str]:
        """Request paths in order; the crawler's ``/.well-known/tdmrep.json`` request only with ``tdmrep``."""
        return [h.path for h in self.log if tdmrep or h.path != TDMREP]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: Any) -> None:
        conn.settimeout(0.05)
        end, data = time.monotonic() + self.max_s, b""
        with conn:
            while time.monotonic() < end and not self._stop.is_set():
                try:
                    got = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    got = b""
                if not got:
                    self.hung_up.append(time.monotonic())
                    return
                data += got
                if b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                    path = lines[0].split(" ")[1] if " " in lines[0] else ""
                    self.log.append(Hit(time.monotonic(), self.host, path, {k.lower(): v for k, v in headers.items()}))

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)

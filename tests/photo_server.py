"""A hostile little web server on the loopback address for `dynamicid collect`'s tests and benchmark: good
photos, and every way a download goes wrong. Paths:

  /photo/NAME        a JPEG (NAME.png: a PNG sent as image/jpeg under a .jpg-looking URL is /png/NAME)
  /same/NAME         the bytes of /photo/a.jpg again (duplicate content)
  /png/NAME          a PNG whatever the URL says
  /status/CODE       that HTTP status
  /flaky/NAME        503 with Retry-After: 0 the first time, then a JPEG
  /slow              no answer for 5 s
  /drip              a JPEG's headers, then a byte every 0.3 s
  /announced-huge    Content-Length 10**9
  /streamed-huge     chunked, without end
  /text              plain text
  /cut               Content-Length 10000, then 100 bytes and a closed connection
  /loop/a, /loop/b   redirect to each other
  /hops/N            redirect to /hops/N+1, without end
  /to-file           redirect to file:///etc/passwd
  /moved             redirect to /photo/moved.jpg
  /noai              a JPEG with X-Robots-Tag: noai
  /file/KEY          the file `files[KEY]` (real photos)
  /delay/MS/NAME     after MS milliseconds, a JPEG whose bytes differ by NAME (the benchmark's network wait)
  /to-metadata       redirect to the cloud metadata address (169.254.169.254); /to-private: to 10.0.0.1
  /to-localhost      redirect to http://localhost:PORT/photo/x.jpg (a name, not an address)
  /to-unicode        redirect to a Location with non-ASCII characters
  /superscript       Content-Length: ² (a digit to str.isdigit, not a number)
  /trickle-headers   a header line every 0.2 s, for up to 20 s
  /continue-flood    "100 Continue" answers, every 0.05 s, for up to 20 s
  /endless-trailer   a whole chunked JPEG, then trailer lines every 0.05 s, for up to 20 s
  /many-headers      150 headers
  /huge-headers      headers of 2 x 60,000 bytes
Each endless answer is bounded (20 s) and ends when the client hangs up.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import numpy as np
from loopback import LoopbackServer
from PIL import Image


def _image_bytes(kind: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


class PhotoServer(LoopbackServer):
    def __init__(self, files: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.files = files or {}
        self.requests: Counter[str] = Counter()
        self.jpeg_a = _image_bytes("JPEG", 0)
        self.png = _image_bytes("PNG", 1)
        super().__init__(self._handler(), host)

    def jpeg(self, name: str) -> bytes:
        return self.jpeg_a if name == "a.jpg" else _image_bytes("JPEG", sum(map(ord, name)) + 7)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests[self.path] += 1
                try:
                    server.answer(self, self.path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def answer(self, handler, path: str) -> None:  # noqa: C901 - one branch per case reads best here
        parts = path.strip("/").split("/")
        head, name = parts[0], parts[-1]
        if head == "photo":
            return _send(handler, 200, self.jpeg(name), "image/jpeg")
        if head == "same":
            return _send(handler, 200, self.jpeg_a, "image/jpeg")
        if head == "png":
            return _send(handler, 200, self.png, "image/jpeg")
        if head == "status":
            return _send(handler, int(name), b"no", "text/plain", {"Retry-After": "0"})
        if head == "flaky":
            if self.requests[path] == 1:
                return _send(handler, 503, b"busy", "text/plain", {"Retry-After": "0"})
            return _send(handler, 200, self.jpeg(name), "image/jpeg")
        if head == "slow":
            time.sleep(5)
            return _send(handler, 200, self.jpeg_a, "image/jpeg")
        if head == "drip":
            return _drip(handler, self.jpeg_a)
        if head == "announced-huge":
            return _send(handler, 200, b"", "image/jpeg", {"Content-Length": str(10**9)}, body=False)
        if head == "streamed-huge":
            return _endless(handler, self.jpeg_a)
        if head == "text":
            return _send(handler, 200, b"hello, this is text", "text/plain")
        if head == "cut":
            return _send(handler, 200, self.jpeg_a[:100], "image/jpeg", {"Content-Length": "10000"}, close=True)
        if head == "loop":
            return _redirect(handler, "/loop/b" if name == "a" else "/loop/a")
        if head == "hops":
            return _redirect(handler, f"/hops/{int(name) + 1}")
        if head == "to-file":
            return _redirect(handler, "file:///etc/passwd")
        if head == "moved":
            return _redirect(handler, "/photo/moved.jpg")
        if head == "file" and name in self.files:
            with open(self.files[name], "rb") as handle:
                return _send(handler, 200, handle.read(), "image/jpeg")
        if head == "delay":
            time.sleep(int(parts[1]) / 1000)
            return _send(handler, 200, self.jpeg_a + name.encode(), "image/jpeg")  # bytes after the end: unique
        hostile = HOSTILE.get(head)
        if hostile is not None:
            return hostile(self, handler)
        if head == "noai":
            return _send(handler, 200, self.jpeg_a, "image/jpeg", {"X-Robots-Tag": "noai"})
        return _send(handler, 404, b"not here", "text/plain")


def _send(handler, code, data, kind, headers=None, body=True, close=False) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", kind)
    headers = headers or {}
    if "Content-Length" not in headers:
        handler.send_header("Content-Length", str(len(data)))
    for key, value in headers.items():
        handler.send_header(key, value)
    if close:
        handler.send_header("Connection", "close")
    handler.end_headers()
    if body:
        handler.wfile.write(data)
        handler.wfile.flush()
    if close:
        handler.close_connection = True


def _redirect(handler, location: str) -> None:
    handler.send_response(302)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _drip(handler, data: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    for byte in data:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.3)


def _endless(handler, data: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = data + bytes(65536)
    for _ in range(10_000):
        handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        handler.wfile.flush()


def _raw(handler, data: bytes) -> None:
    handler.wfile.write(data)
    handler.wfile.flush()


def _for_a_while(step: float, seconds: float = 20.0):
    """Yields until `seconds` pass, sleeping `step` between: an endless answer that still ends."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        yield
        time.sleep(step)


def _trickle_headers(server, handler) -> None:
    _raw(handler, b"HTTP/1.1 200 OK\r\n")
    for n, _ in enumerate(_for_a_while(0.2)):
        _raw(handler, f"X-Slow-{n}: a\r\n".encode())
    handler.close_connection = True


def _continue_flood(server, handler) -> None:
    for _ in _for_a_while(0.05):
        _raw(handler, b"HTTP/1.1 100 Continue\r\n\r\n")
    handler.close_connection = True


def _endless_trailer(server, handler) -> None:
    data = server.jpeg_a
    _raw(handler, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
    _raw(handler, f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n")
    for n, _ in enumerate(_for_a_while(0.05)):
        _raw(handler, f"X-Trailer-{n}: a\r\n".encode())
    handler.close_connection = True


def _headers(handler, lines: list[str]) -> None:
    _raw(handler, ("HTTP/1.1 200 OK\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode())
    handler.close_connection = True


HOSTILE = {
    "to-metadata": lambda server, handler: _redirect(handler, "http://169.254.169.254/latest/meta-data/"),
    "to-private": lambda server, handler: _redirect(handler, "http://10.0.0.1/photo.jpg"),
    "to-localhost": lambda server, handler: _redirect(
        handler, f"http://localhost:{handler.server.server_address[1]}/photo/x.jpg"
    ),
    "to-unicode": lambda server, handler: _raw(
        handler, "HTTP/1.1 302 Found\r\nLocation: /photo/caf\u00e9\u4e2d.jpg\r\nContent-Length: 0\r\n\r\n".encode()
    ),
    "superscript": lambda server, handler: _headers(handler, ["Content-Type: image/jpeg", "Content-Length: \u00b2"]),
    "trickle-headers": _trickle_headers,
    "continue-flood": _continue_flood,
    "endless-trailer": _endless_trailer,
    "many-headers": lambda server, handler: _headers(handler, [f"X-N{n}: a" for n in range(150)]),
    "huge-headers": lambda server, handler: _headers(handler, [f"X-Big{n}: {'a' * 60000}" for n in range(2)]),
}

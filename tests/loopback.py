"""A threaded HTTP server on the loopback address, started and stopped as a context manager: the base of
the tests' stand-ins for the Hugging Face Hub (hub_server) and for photo hosts (photo_server)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default 5 drops connections under many clients (they retry after 1 s)


class _Server6(_Server):
    address_family = socket.AF_INET6


class LoopbackServer:
    """Serves `handler` (a BaseHTTPRequestHandler class) at `self.url` inside a `with` block; `host` "::1"
    serves on IPv6's loopback address."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
        self.httpd = (_Server6 if ":" in host else _Server)((host, 0), handler)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

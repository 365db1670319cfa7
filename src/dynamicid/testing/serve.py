"""`dynamicid serve --tiny` started as a user starts it, for the tests and the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_tiny_server() -> tuple[subprocess.Popen, str]:
    """The server in a subprocess on a free loopback port, and its URL once it says it is serving. Its stdout
    stays open: the next line names its files' folder."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dynamicid.cli", "serve", "--tiny", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("serving on"):
            return server, f"http://127.0.0.1:{port}/"
    server.wait()
    raise RuntimeError(f"dynamicid serve --tiny stopped before serving (exit {server.returncode})")

"""What collect may connect to, and for how long.

A URL list is untrusted input: a listed URL or a redirect may name the machine itself, the private network
it runs in or the cloud metadata address (169.254.169.254). Every host is resolved here, each address is
checked, and the socket connects to a checked address (never to the name again, so a DNS answer that
changes between the check and the connection gains nothing); the address actually connected to is checked
once more. Only public (globally routable) addresses pass, unless `--allow-addresses` names others.

A download also has one deadline for the whole exchange: a watchdog shuts the socket down when it passes,
so a server that trickles its headers, floods `100 Continue` or sends trailers forever is cut off."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable

from dynamicid.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(Exception):
    """A host resolved to an address collect does not connect to."""


def parse_networks(text: str, option: str = "--allow-addresses") -> tuple[Network, ...]:
    """'127.0.0.1/32,10.0.0.0/8' (or single addresses) as networks; a bad entry is a ConfigError."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                f"{option}: {entry!r} is not an address or a network; give CIDRs such as 127.0.0.1/32 or "
                "10.0.0.0/8, separated by commas"
            ) from None
    return tuple(networks)


def refusal(address: str, allowed: Iterable[Network] = ()) -> str | None:
    """Why collect does not connect to `address` (loopback, private, link-local, reserved, multicast or
    otherwise not globally routable), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip in network for network in allowed):
        return None
    if ip.is_global and not ip.is_multicast:
        return None
    kind = next(
        (
            name
            for name, flag in (
                ("loopback", ip.is_loopback),
                ("link-local (the cloud metadata range)", ip.is_link_local),
                ("private", ip.is_private),
                ("multicast", ip.is_multicast),
                ("reserved", ip.is_reserved),
            )
            if flag
        ),
        "not public",
    )
    return f"{ip} is a {kind} address; collect connects only to public ones (--allow-addresses lets others)"


def guarded_connector(allowed: tuple[Network, ...]) -> Callable:
    """A drop-in for socket.create_connection that resolves the host, refuses blocked addresses before
    connecting (BlockedAddress) and connects to a checked address."""

    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):  # noqa: SLF001
        host, port = address
        try:
            resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as err:
            raise OSError(f"the host name cannot be looked up: {err}") from None
        usable, refused = [], []
        for family, kind, proto, _, sockaddr in resolved:
            why = refusal(sockaddr[0], allowed)
            (refused if why else usable).append(why or (family, kind, proto, sockaddr))
        if not usable:
            raise BlockedAddress(refused[0] if refused else f"{host} has no address")
        last_error: OSError | None = None
        for family, kind, proto, sockaddr in usable:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # noqa: SLF001
                    sock.settimeout(timeout)
                sock.connect(sockaddr)
                why = refusal(sock.getpeername()[0], allowed)  # the address this socket really reached
                if why:
                    raise BlockedAddress(why)
                return sock
            except OSError as err:
                sock.close()
                last_error = err
            except BlockedAddress:
                sock.close()
                raise
        raise last_error or OSError(f"cannot connect to {host}")

    return connect


class Watchdog:
    """Shuts a connection's socket down at `deadline` (time.monotonic()), ending any read in progress;
    `fired` says whether it did."""

    def __init__(self, connection, deadline: float):
        self.connection, self.fired = connection, False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_) -> None:
        self._timer.cancel()

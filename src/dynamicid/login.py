"""Where a page listens and who may use it: the options `serve` and `review` share, written once."""

from __future__ import annotations

from dynamicid.errors import ConfigError
from dynamicid.options import option


def host_option():
    return option("127.0.0.1", "address to listen on; the default serves this machine only (0.0.0.0: everyone)")


def port_option(default: int):
    return option(default, "port to listen on", limits=(1, 65535))


def auth_option():
    return option(None, "require a login: user:password, or a bare token any user name may use as password")


def check_auth_option(auth: str | None) -> None:
    """Refuse an --auth that lets nobody in."""
    if auth is None:
        return
    user, colon, secret = auth.partition(":")
    if not auth.strip(":") or (colon and not (user and secret)):
        raise ConfigError(f"auth {auth!r} lets nobody log in: give user:password with both parts, or a bare token")


def login_ok(auth: str | None, username: str, password: str) -> bool:
    """Gradio's login check: the pair for "user:password", any user name with the token otherwise."""
    if auth is None:
        return True
    user, colon, secret = auth.partition(":")
    return (username == user and password == secret) if colon else password == auth

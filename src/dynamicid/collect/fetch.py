"""Downloading one URL: its status, and the photo written whole or not at all.

Only http and https are fetched. Redirects are followed by hand (at most `max_redirects`, never to another
scheme, a loop is an error), a response is streamed to a hidden temporary file beside its place, checked
as it arrives (the byte limit, the total time, the first bytes are an image's), then renamed into place
under a name whose extension comes from the bytes. Memory per download is one read buffer."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

from dynamicid.collect.config import CollectConfig
from dynamicid.collect.network import BlockedAddress, Watchdog, guarded_connector
from dynamicid.imagefile import sniff_format

CHUNK = 64 * 1024
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "tiff": "tif", "gif": "gif"}
TEMPORARY_PREFIX = ".collect-"  # hidden: prep never lists it; a rerun after a crash removes it
OPT_OUT_TAGS = ("noai", "noimageai")
STATUSES = (
    "ok",
    "http_error",
    "timeout",
    "too_large",
    "not_an_image",
    "incomplete",
    "redirect_error",
    "connection_error",
    "invalid_url",
    "blocked_address",
    "opted_out",
    "duplicate_url",
    "duplicate_content",
    "withdrawn",  # no longer in the URL list: its photo was removed (a takedown)
    "error",  # an unexpected failure, named in the message (a bug: please report it)
)
# Retried on a rerun (and http_error 429 or 5xx): transient failures, a blocked address (the rerun may allow
# it) and an unexpected error (fixed since, perhaps).
RETRIED_ON_RERUN = ("timeout", "connection_error", "incomplete", "blocked_address", "error")
MAX_HEADER_BYTES = 64 * 1024  # all of a response's headers together (http.client caps their count at 100)


@dataclass
class Fetched:
    status: str
    http_status: int | None = None
    bytes: int = 0
    sha256: str | None = None
    content_type: str | None = None
    path: str | None = None
    message: str | None = None


class _Outcome(Exception):
    """Ends one download with a status (raised deep in the streaming, caught once)."""

    def __init__(self, fetched: Fetched, retry_after: float | None = None):
        super().__init__(fetched.message)
        self.fetched, self.retry_after = fetched, retry_after


class HostLimits:
    """A semaphore per host: at most `per_host` downloads at once from one host, in this process."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._lock = threading.Lock()
        self._hosts: dict[str, threading.Semaphore] = {}

    def of(self, host: str) -> threading.Semaphore:
        with self._lock:
            return self._hosts.setdefault(host, threading.Semaphore(self.per_host))


def check_url(url: str) -> str | None:
    """Why `url` is not fetched (only http and https, with a host), or None."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        return f"not a URL: {err}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"only http and https URLs are fetched, not {parts.scheme or 'a URL without a scheme'}"
    if not parts.hostname:
        return "the URL has no host"
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError as err:
        return f"the URL's port is not valid: {err}"
    if not url.isascii():
        return "the URL has characters that are not ASCII; percent-encode them"
    return None


def fetch(url: str, target: str, config: CollectConfig, hosts: HostLimits) -> Fetched:
    """Download `url` to `target` + an extension from the bytes; retries with backoff on timeouts, lost
    connections, 429 and 5xx (Retry-After honoured)."""
    problem = check_url(url)
    if problem is not None:
        return Fetched("invalid_url", message=problem)
    delay = config.backoff
    for attempt in range(config.retries + 1):
        try:
            return _follow(url, target, config, hosts)
        except _Outcome as outcome:
            fetched = outcome.fetched
            if attempt == config.retries or not _retried(fetched):
                return fetched
            time.sleep(min(outcome.retry_after if outcome.retry_after is not None else delay, config.max_seconds))
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns on its last attempt


def _retried(fetched: Fetched) -> bool:
    code = fetched.http_status or 0
    return fetched.status in ("timeout", "connection_error") or (
        fetched.status == "http_error" and (code == 429 or code >= 500)
    )


def _follow(url: str, target: str, config: CollectConfig, hosts: HostLimits) -> Fetched:
    seen = {url}
    deadline = time.monotonic() + config.max_seconds
    for _ in range(config.max_redirects + 1):
        host = urlsplit(url).hostname or ""
        with hosts.of(host):
            location = _request(url, target, config, deadline)
        if isinstance(location, Fetched):
            return location
        url = urljoin(url, location.strip())
        problem = check_url(url)
        if problem is not None:
            raise _Outcome(Fetched("redirect_error", message=f"redirected to {url[:200]}: {problem}"))
        if url in seen:
            raise _Outcome(Fetched("redirect_error", message=f"a redirect loop through {url[:200]}"))
        seen.add(url)
    raise _Outcome(Fetched("redirect_error", message=f"more than {config.max_redirects} redirects"))


def _request(url: str, target: str, config: CollectConfig, deadline: float) -> Fetched | str:
    """One GET: the photo (a Fetched), or a redirect's Location. The whole exchange ends at `deadline`."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "https"
    kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The port always given: http.client would read "::1" as host ":" and port 1.
    connection = kind(parts.hostname, parts.port or (443 if secure else 80), timeout=config.timeout)
    connection._create_connection = guarded_connector(config.allowed_networks)  # noqa: SLF001
    watchdog = Watchdog(connection, deadline)
    try:
        with watchdog:
            connection.request("GET", path, headers={"User-Agent": config.user_agent, "Accept": "image/*"})
            response = connection.getresponse()
            _check_headers(response)
            if 300 <= response.status < 400 and response.getheader("Location"):
                return response.getheader("Location", "")
            _check_response(response, config)
            fetched = _stream(response, target, config, deadline, watchdog)
        return fetched
    except _Outcome:
        raise
    except BlockedAddress as err:
        raise _Outcome(Fetched("blocked_address", message=str(err))) from None
    except (TimeoutError, OSError, http.client.HTTPException) as err:
        raise _Outcome(_failure(err, config, watchdog.fired)) from None
    finally:
        connection.close()


def _failure(err: Exception, config: CollectConfig, deadline_passed: bool) -> Fetched:
    if deadline_passed:
        return Fetched("timeout", message=f"the exchange took longer than {config.max_seconds:g} s")
    if isinstance(err, TimeoutError):
        return Fetched("timeout", message=f"no answer within {config.timeout:g} s")
    if isinstance(err, http.client.IncompleteRead):
        return Fetched("incomplete", message=f"the connection closed early: {err}")
    return Fetched("connection_error", message=f"{type(err).__name__}: {err}"[:300])


def _check_headers(response: http.client.HTTPResponse) -> None:
    size = sum(len(name) + len(value) for name, value in response.getheaders())
    if size > MAX_HEADER_BYTES:
        raise _Outcome(Fetched("connection_error", response.status, message=f"{size} bytes of headers"))
    location = response.getheader("Location")
    if location is not None and not location.isascii():
        message = "a redirect to a Location that is not ASCII (it must be percent-encoded)"
        raise _Outcome(Fetched("redirect_error", response.status, message=message))


def _check_response(response: http.client.HTTPResponse, config: CollectConfig) -> None:
    code, kind = response.status, response.getheader("Content-Type")
    if code >= 400:
        fetched = Fetched("http_error", code, content_type=kind, message=f"HTTP {code} {response.reason}")
        raise _Outcome(fetched, _retry_after(response.getheader("Retry-After")))
    robots = (response.getheader("X-Robots-Tag") or "").lower()
    if config.respect_opt_out and any(tag in robots for tag in OPT_OUT_TAGS):
        raise _Outcome(Fetched("opted_out", code, content_type=kind, message=f"X-Robots-Tag: {robots}"))
    length = (response.getheader("Content-Length") or "").strip()
    if length and not (length.isascii() and length.isdigit()):
        message = f"Content-Length {length[:40]!r} is not a number"
        raise _Outcome(Fetched("connection_error", code, content_type=kind, message=message))
    if length and int(length) > config.max_bytes:
        raise _Outcome(Fetched("too_large", code, int(length), content_type=kind, message=f"{length} bytes announced"))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _stream(
    response: http.client.HTTPResponse, target: str, config: CollectConfig, deadline: float, watchdog: Watchdog
) -> Fetched:
    """The body to a temporary file, checked as it comes, then renamed to `target`.EXT."""
    code, kind = response.status, response.getheader("Content-Type")
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}")
    digest, size, head, extension = hashlib.sha256(), 0, b"", None
    try:
        with open(temporary, "wb") as handle:
            while chunk := response.read1(CHUNK):  # what has arrived: the time limit is checked per read
                size += len(chunk)
                if size > config.max_bytes:
                    raise _Outcome(Fetched("too_large", code, size, content_type=kind, message="over the byte limit"))
                if time.monotonic() > deadline:
                    message = f"still arriving after {config.max_seconds:g} s"
                    raise _Outcome(Fetched("timeout", code, size, content_type=kind, message=message))
                if extension is None and len(head) < 16:
                    head += chunk[:16]
                    extension = _extension(head, code, kind) if len(head) >= 16 else None
                digest.update(chunk)
                handle.write(chunk)
            if watchdog.fired or time.monotonic() > deadline:  # e.g. endless trailers, cut off by the watchdog
                message = f"the exchange took longer than {config.max_seconds:g} s"
                raise _Outcome(Fetched("timeout", code, size, content_type=kind, message=message))
            if response.length:  # the bytes still owed when the server closed: read1 does not raise for it
                message = (
                    f"the connection closed {response.length} bytes short of the {size + response.length} announced"
                )
                raise _Outcome(Fetched("incomplete", code, size, content_type=kind, message=message))
            handle.flush()
            os.fsync(handle.fileno())
        extension = extension or _extension(head, code, kind)
        if config.respect_opt_out:
            _check_credentials(temporary, extension, code, kind, size)
        path = f"{target}.{extension}"
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    return Fetched("ok", code, size, digest.hexdigest(), kind, path)


def _check_credentials(path: str, extension: str, code: int, kind: str | None, size: int) -> None:
    """A photo whose C2PA credentials rule out AI training (a training-mining assertion saying notAllowed) is
    opted_out, as X-Robots-Tag: noai is. The owner's wish counts even when the signature does not validate."""
    from dynamicid.responsible.credentials import MIME_TYPES, read_credentials, training_refused

    mime = MIME_TYPES.get(f".{extension}")
    if mime is None:
        return
    with open(path, "rb") as handle:  # read where the manifest is, not loaded whole a second time
        reading = read_credentials(handle, mime)
    refused = training_refused(reading)
    if refused:
        raise _Outcome(Fetched("opted_out", code, size, content_type=kind, message=f"C2PA {refused}"))


def _extension(head: bytes, code: int, kind: str | None) -> str:
    found = sniff_format(head) if head else None
    if found is None:
        message = "the bytes are not an image" if head else "an empty body"
        raise _Outcome(Fetched("not_an_image", code, len(head), content_type=kind, message=message))
    return EXTENSIONS[found]

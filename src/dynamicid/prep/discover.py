"""Listing the input on the driver: paths and sizes only, never image bytes."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute local path, or a URI the workers can open (hdfs://, s3a://, ...)
    relative: str  # path below the input root, with "/" separators
    identity: str | None
    size: int  # bytes; -1 when it could not be read
    problem: str | None = None  # why the file cannot be read, found while listing (it still gets a row)


def is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(path: str) -> str:
    return urlparse(path).path if path.startswith("file:") else path


def identity_of(relative: str, layout: str) -> str | None:
    parts = relative.split("/")
    if layout != "by-identity" or len(parts) < 2:  # flat, or cluster: identities come later, from the faces
        return None
    return parts[0]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") or part.startswith("_") for part in relative.split("/"))


def _not_utf8(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _inspect(full: str) -> tuple[int, str | None]:
    """(size, problem) of one listed entry, following links."""
    try:
        info = os.stat(full)
    except OSError as err:
        kind = (
            "a symbolic link loop"
            if err.errno == errno.ELOOP
            else ("a broken symbolic link" if os.path.islink(full) else "unreadable")
        )
        return -1, f"{kind}: {err.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return -1, "not a regular file (a FIFO, socket or device); only files are read"
    return info.st_size, None


def iter_local(root: str, layout: str, exclude: str | None = None) -> Iterator[InputFile]:
    """Every file below `root`, found one at a time (no list is held), with links to folders followed once
    (a loop or a second link to a folder already listed is not walked again). `exclude` (prep's OUTPUT, when
    it lies inside the input) is never listed, so a run never reads what prep wrote."""
    root = os.path.abspath(local_path(root))
    if os.path.isfile(root):
        yield InputFile(root, os.path.basename(root), None, os.path.getsize(root))
        return
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input not found: {root}")
    skip = os.path.realpath(exclude) if exclude else None
    seen: set[tuple[int, int]] = set()
    unreadable: list[OSError] = []  # folders os.walk could not list, each given a row below

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable.append):
        yield from _unreadable_folders(unreadable, root, layout)
        here = os.stat(folder)
        if (here.st_dev, here.st_ino) in seen or (skip and os.path.realpath(folder) == skip):
            dirs[:] = []
            if folder != root:
                logger.warning(
                    "not listing %s again: it is a link to a folder already listed, or prep's output", folder
                )
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            full = os.path.join(folder, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if _hidden(relative):
                continue
            size, problem = _inspect(full)
            if _not_utf8(full):  # Arrow and Parquet hold UTF-8 only: the row names the file as well as it can
                problem = "the file name is not valid UTF-8; rename it"
                full, relative = (
                    text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for text in (full, relative)
                )
            yield InputFile(full, relative, identity_of(relative, layout), size, problem)
    yield from _unreadable_folders(unreadable, root, layout)


def _unreadable_folders(errors: list[OSError], root: str, layout: str) -> Iterator[InputFile]:
    """A row for each folder that could not be listed (no permission), so the manifest says what was missed.
    The input folder itself unreadable is an error of the whole run."""
    while errors:
        err = errors.pop(0)
        folder = str(err.filename or root)
        if os.path.abspath(folder) == root:
            raise PermissionError(err.errno, f"the input folder cannot be listed: {err.strerror}", folder)
        relative = os.path.relpath(folder, root).replace(os.sep, "/") + "/"
        logger.warning("cannot list %s: %s; it gets a read_error row", folder, err.strerror)
        problem = f"a folder that cannot be listed ({err.strerror}): its photos were not read; fix its permissions"
        yield InputFile(folder, relative, identity_of(relative, layout), -1, problem)


def list_local(root: str, layout: str, exclude: str | None = None) -> list[InputFile]:
    """`iter_local`, gathered and sorted by relative path."""
    return sorted(iter_local(root, layout, exclude), key=lambda f: f.relative)


def list_with_spark(spark, root: str, layout: str) -> list[InputFile]:
    """Any Hadoop-readable path, listed through Hadoop's FileSystem API: names and sizes, no content.

    (Spark's binaryFile source would also list, but it drops zero-byte files, which must get a row.)
    """
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not filesystem.exists(path):
        raise FileNotFoundError(f"input not found: {root}")
    prefix = filesystem.makeQualified(path).toString().rstrip("/") + "/"
    found = []
    listing = filesystem.listFiles(path, True)
    while listing.hasNext():
        status = listing.next()
        full = status.getPath().toString()
        relative = full[len(prefix) :] if full.startswith(prefix) else full.rsplit("/", 1)[-1]
        if _hidden(relative):
            continue
        found.append(InputFile(full, relative, identity_of(relative, layout), int(status.getLen())))
    return sorted(found, key=lambda f: f.relative)


def list_input(root: str, layout: str, spark=None, exclude: str | None = None) -> Iterable[InputFile]:
    """The input's files, streamed for a local folder (the driver never holds a local listing)."""
    if is_local(root):
        return iter_local(root, layout, exclude)
    if spark is None:
        raise ValueError(f"listing {root} needs a Spark session")
    return list_with_spark(spark, root, layout)


def read_uri(uri: str) -> bytes:
    """Any URI pyarrow's filesystems open (hdfs://, s3://, gs://, file://)."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


def _open_stream(path: str):
    if is_local(path):
        return open(local_path(path), "rb")
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    return filesystem.open_input_stream(inner)


def read_limited(path: str, limit: int, chunk: int = 1 << 20) -> tuple[bytes, str]:
    """(bytes, SHA-256 hex) of a file, hashed as it streams in; past `limit` bytes it stops reading and
    raises Rejected("too_large_file"), so no file costs more memory than the limit."""
    from dynamicid.imagefile import Rejected

    digest, parts, total = hashlib.sha256(), [], 0
    with _open_stream(path) as stream:
        while block := stream.read(chunk):
            total += len(block)
            if total > limit:
                raise Rejected("too_large_file", f"over {limit} bytes (the limit); reading stopped there")
            digest.update(block)
            parts.append(block)
    return b"".join(parts), digest.hexdigest()

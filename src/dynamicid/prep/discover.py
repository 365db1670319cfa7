"""Listing the input on the driver: paths and sizes only, never image bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute local path, or a URI the workers can open (hdfs://, s3a://, ...)
    relative: str  # path below the input root, with "/" separators
    identity: str | None
    size: int


def is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(path: str) -> str:
    return urlparse(path).path if path.startswith("file:") else path


def identity_of(relative: str, layout: str) -> str | None:
    parts = relative.split("/")
    if layout == "flat" or len(parts) < 2:
        return None
    return parts[0]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") or part.startswith("_") for part in relative.split("/"))


def list_local(root: str, layout: str) -> list[InputFile]:
    root = os.path.abspath(local_path(root))
    if os.path.isfile(root):
        return [InputFile(root, os.path.basename(root), None, os.path.getsize(root))]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input not found: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            full = os.path.join(folder, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if _hidden(relative) or not os.path.isfile(full):
                continue
            found.append(InputFile(full, relative, identity_of(relative, layout), os.path.getsize(full)))
    return found


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
        relative = full[len(prefix):] if full.startswith(prefix) else full.rsplit("/", 1)[-1]
        if _hidden(relative):
            continue
        found.append(InputFile(full, relative, identity_of(relative, layout), int(status.getLen())))
    return sorted(found, key=lambda f: f.relative)


def list_input(root: str, layout: str, spark=None) -> list[InputFile]:
    if is_local(root):
        return list_local(root, layout)
    if spark is None:
        raise ValueError(f"listing {root} needs a Spark session")
    return list_with_spark(spark, root, layout)


def read_uri(uri: str) -> bytes:
    """Any URI pyarrow's filesystems open (hdfs://, s3://, gs://, file://)."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


def read_bytes(path: str) -> bytes:
    """Read on a worker: local files directly, other URIs through pyarrow's filesystems."""
    if is_local(path):
        with open(local_path(path), "rb") as handle:
            return handle.read()
    return read_uri(path)

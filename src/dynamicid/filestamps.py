"""Cheap identities of files and folders: a file's sha256, and a folder's stamp from its files' names, sizes
and modification times (nothing read), for telling whether something changed since the last run."""

from __future__ import annotations

import hashlib
import json
import os


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_stamp(folder: str | None, skip: tuple[str, ...] = ()) -> str | None:
    """A digest of every file under `folder` by relative name, size and modification time (subfolders whose
    names start with one of `skip` left out; files that vanish while it looks are skipped); None when there is
    no such folder. New, changed or removed files change it."""
    if not folder or not os.path.isdir(folder):
        return None
    entries = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (skip and d.startswith(skip)))
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


SMALL_FILE = 64 * 1024


def output_stamp(folder: str | None, skip: tuple[str, ...] = ()) -> str | None:
    """A folder's stamp (`folder_stamp`) that also reads the small files (configs, records, up to 64 KiB), so a
    deleted, cut or edited file changes it even when its size and time are kept; None when there is no
    such folder. Subfolders whose names start with one of `skip` are left out."""
    if not folder or not os.path.isdir(folder):
        return None
    digest = hashlib.sha256(str(folder_stamp(folder, skip)).encode())
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (skip and d.startswith(skip)))
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                if os.path.getsize(path) <= SMALL_FILE:
                    digest.update(os.path.relpath(path, folder).encode() + file_sha256(path).encode())
            except OSError:
                continue
    return digest.hexdigest()

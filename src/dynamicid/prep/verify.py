"""Keeping images/ equal to the manifest: after a run, files no row lists are removed (outputs of inputs
that changed or left); `dynamicid prep --verify OUTPUT` reports any difference without changing anything."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from dynamicid.prep import outputs

MANIFEST = "manifest.parquet"


def faces_with_files(
    manifest_path: str, clustered_only: bool = False, batch_rows: int = 65536
) -> Iterator[tuple[str | None, str]]:
    """(identity, name) of every face whose four files the output holds: the kept ones, and the duplicates
    curation rejected (their files stay, so a rerun resumes them); only those whose identity is a cluster's
    when `clustered_only`. A batch of five short columns at a time."""
    import pyarrow.parquet as pq

    columns = ["status", "reason", "identity", "name", "identity_source"]
    for batch in pq.ParquetFile(manifest_path).iter_batches(batch_size=batch_rows, columns=columns):
        for status, reason, identity, name, source in zip(*(batch.column(i).to_pylist() for i in range(5))):
            if name and (status == "ok" or reason == "duplicate") and (source == "cluster" or not clustered_only):
                yield identity, name


def listed_outputs(manifest_path: str) -> set[str]:
    """`faces_with_files` as "<identity folder>/<name>" (each has four files); about 100 bytes per face."""
    return {os.path.join(outputs.identity_folder(identity), name) for identity, name in faces_with_files(manifest_path)}


def _is_listed(relative: str, listed: set[str]) -> bool:
    stem, _, extension = relative.rpartition(".")
    return extension in outputs.OUTPUT_EXTENSIONS and stem in listed


def _files_under(folder: str):
    for here, _, files in os.walk(folder):
        for name in files:
            yield os.path.relpath(os.path.join(here, name), folder)


@dataclass
class OutputsCheck:
    output: str
    listed: int = 0
    missing: list[str] = field(default_factory=list)  # named by the manifest, absent from images/
    unlisted: list[str] = field(default_factory=list)  # in images/, named by no row
    damaged: list[str] = field(default_factory=list)  # "path: why", as training would refuse them

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unlisted and not self.damaged

    def describe(self, limit: int = 20) -> str:
        head = (
            f"{self.output}: images/ holds exactly the {self.listed} files the manifest lists"
            if self.ok
            else f"{self.output}: images/ differs from the manifest: {len(self.missing)} listed files missing, "
            f"{len(self.unlisted)} files no row lists, {len(self.damaged)} faces with damaged files. Rerun the same "
            "prep command to repair it."
        )
        lines = [head]
        for title, paths in (("missing", self.missing), ("not listed", self.unlisted), ("damaged", self.damaged)):
            lines += [f"  {title}: images/{path}" for path in sorted(paths)[:limit]]
            if len(paths) > limit:
                lines.append(f"  ... and {len(paths) - limit} more {title}")
        return "\n".join(lines)


def check_outputs(output: str) -> OutputsCheck:
    """Compares images/ with the manifest's kept faces, changing nothing."""
    from dynamicid.prep.guard import PrepError

    manifest_path = os.path.join(output, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise PrepError(f"{manifest_path} not found: {output} is not a finished prep output folder.")
    try:
        listed = listed_outputs(manifest_path)
    except Exception as err:  # pyarrow raises several kinds for a damaged file
        raise PrepError(f"{manifest_path} cannot be read ({err}); rerun prep to rewrite it.") from None
    present = set(_files_under(os.path.join(output, outputs.IMAGES_DIR)))
    expected = {f"{stem}.{extension}" for stem in listed for extension in outputs.OUTPUT_EXTENSIONS}
    missing = expected - present
    return OutputsCheck(
        output,
        listed=len(expected),
        missing=sorted(missing),
        unlisted=sorted(present - expected),
        damaged=_damaged_faces(output, manifest_path, {m.rpartition(".")[0] for m in missing}),
    )


def _damaged_faces(output: str, manifest_path: str, incomplete: set[str], batch_rows: int = 65536) -> list[str]:
    """Training's checks on every complete kept face (end markers, headers, UTF-8, a readable embedding of
    the manifest's width); one batch of the manifest at a time."""
    import pyarrow.parquet as pq

    damaged = []
    columns = ["status", "identity", "name", "embedding_dim"]
    for batch in pq.ParquetFile(manifest_path).iter_batches(batch_size=batch_rows, columns=columns):
        for status, identity, name, dim in zip(*(batch.column(i).to_pylist() for i in range(4))):
            stem = os.path.join(outputs.identity_folder(identity), name or "")
            if status != "ok" or stem in incomplete:
                continue
            problem = outputs.face_files_problem(outputs.face_paths(output, identity, name), dim)
            if problem is not None:
                damaged.append(problem.replace(os.path.join(output, outputs.IMAGES_DIR, ""), "", 1))
    return damaged


def remove_unlisted(output: str, manifest_path: str) -> int:
    """Deletes every file under images/ that no kept face of the manifest names, and the folders that
    leaves empty. Returns how many files went."""
    listed = listed_outputs(manifest_path)
    images = os.path.join(output, outputs.IMAGES_DIR)
    removed = 0
    for relative in list(_files_under(images)):
        if not _is_listed(relative, listed):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(images, relative))
                removed += 1
    for here, _, _ in os.walk(images, topdown=False):
        if here != images and not os.listdir(here):
            with contextlib.suppress(OSError):
                os.rmdir(here)
    return removed

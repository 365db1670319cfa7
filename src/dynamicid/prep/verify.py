"""Keeping images/ equal to the manifest: it holds the files of exactly the `ok` faces. After a run, the files
of faces curation does not keep are set aside under _state/set_aside/, and files no row lists are removed
(outputs of inputs that changed or left); `dynamicid prep --verify OUTPUT` reports any difference without
changing anything."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from dynamicid.prep import outputs

MANIFEST = "manifest.parquet"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceFiles:
    """A face whose four files the output holds."""

    name: str
    identity: str | None  # its person in the manifest
    kept: bool  # `ok`: under images/<identity>/; else (a copy, a face held for review) under _state/set_aside/
    job_identity: str | None  # the folder the job writes it to: its input folder's identity, none for clusters

    def folder(self, output: str) -> str:
        """Where the manifest puts its files."""
        if self.kept:
            return outputs.face_folder(output, self.identity)
        return outputs.face_folder(output, self.job_identity, set_aside=True)

    def job_folder(self, output: str) -> str:
        """Where the job writes them, and looks for them to resume."""
        return outputs.face_folder(output, self.job_identity)


_SET_ASIDE_REASONS = ("duplicate", "held_for_review", "rejected_in_review")


def faces_with_files(manifest_path: str, batch_rows: int = 65536) -> Iterator[FaceFiles]:
    """Every face whose files the output holds: the kept ones, and those curation set aside (copies, faces
    held for review), whose files stay so that a rerun resumes them. A batch of short columns at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(manifest_path)
    columns = ["status", "reason", "identity", "name", "identity_source"]
    has_input = "input_identity" in parquet.schema_arrow.names  # older manifests: the folder is the identity
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns + ["input_identity"] * has_input):
        values = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        inputs = values[5] if has_input else [None] * batch.num_rows
        for status, reason, identity, name, source, given in zip(*values[:5], inputs):
            if name and (status == "ok" or reason in _SET_ASIDE_REASONS):
                job = given if has_input else (None if source == "cluster" else identity)
                yield FaceFiles(name, identity, status == "ok", job)


def place_faces(output: str, back: bool = False) -> int:
    """Puts each face's files where the manifest says: a kept face under its person's folder (a cluster's
    too), a copy or a face held for review set aside under _state/set_aside/. `back` returns every face to
    where the job writes it and looks for it to resume, before a rerun (whose people and copies may differ).
    A move interrupted either way is finished by the next run."""
    manifest_path = os.path.join(output, "manifest.parquet")
    if not os.path.isfile(manifest_path):
        return 0
    moved = 0
    try:
        for face in faces_with_files(manifest_path):
            placed, job = face.folder(output), face.job_folder(output)
            if placed != job:
                moved += outputs.move_face_files(face.name, *((placed, job) if back else (job, placed)))
    except OSError:
        raise
    except Exception as err:  # an earlier manifest pyarrow cannot read: its faces are redone
        logger.warning(
            "%s cannot be read (%s); its set-aside and clustered faces will be prepared again", manifest_path, err
        )
    return moved


def listed_outputs(manifest_path: str, set_aside: bool = False) -> set[str]:
    """The kept faces (or those set aside) as "<folder>/<name>" (each has four files); ~100 bytes per face."""
    return {
        os.path.join(outputs.identity_folder(face.job_identity if set_aside else face.identity), face.name)
        for face in faces_with_files(manifest_path)
        if face.kept != set_aside
    }


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
    review_interrupted: bool = False  # a review was killed while it moved faces

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unlisted and not self.damaged and not self.review_interrupted

    def describe(self, limit: int = 20) -> str:
        head = (
            f"{self.output}: images/ holds exactly the {self.listed} files the manifest lists"
            if self.ok
            else f"{self.output}: images/ differs from the manifest: {len(self.missing)} listed files missing, "
            f"{len(self.unlisted)} files no row lists, {len(self.damaged)} faces with damaged files. Rerun the same "
            "prep command to repair it."
        )
        lines = [head]
        if self.review_interrupted:
            lines.append(
                f"  a review of {self.output} was stopped while it was applied: any `dynamicid review {self.output}` "
                "command (or the same prep command) finishes it"
            )
        for title, paths in (("missing", self.missing), ("not listed", self.unlisted), ("damaged", self.damaged)):
            lines += [f"  {title}: images/{path}" for path in sorted(paths)[:limit]]
            if len(paths) > limit:
                lines.append(f"  ... and {len(paths) - limit} more {title}")
        return "\n".join(lines)


def check_outputs(output: str) -> OutputsCheck:
    """Compares images/ with the manifest's kept faces, changing nothing."""
    from dynamicid.prep.guard import PrepError
    from dynamicid.prep.review import interrupted

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
        review_interrupted=interrupted(output),
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
    """Deletes every file under images/ that no kept face of the manifest names, and under _state/set_aside/
    every file no set-aside face names, and the folders that leaves empty. Returns how many files went."""
    removed = 0
    for set_aside in (False, True):
        listed = listed_outputs(manifest_path, set_aside)
        root = outputs.face_folder(output, None, set_aside)
        for relative in list(_files_under(root)):
            if not _is_listed(relative, listed):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, relative))
                    removed += 1
        for here, _, _ in os.walk(root, topdown=False):
            if here != root and not os.listdir(here):
                with contextlib.suppress(OSError):
                    os.rmdir(here)
    return removed

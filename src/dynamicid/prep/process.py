"""The per-image work of `prep`: small stages over one context per input file.

Each stage has a `setup` (models load once per worker process, with the resources the Spark layer gives)
and a `process_batch` over the files of a Spark task still in flight:

    read -> decode -> detect -> landmarks -> embed -> expression -> caption -> write

The per-file stages run file by file, so a task holds one decoded photo at a time; the batch stages (embed,
expression, caption) run over every kept face of the task at once. A file leaves the flow as soon as it has
its rows (a rejection, a resumed record, an error), and a stage that fails on a file gives that file alone
an `internal_error` row. Every file that was read then gets its completion record, unless it had an error.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dynamicid.faces import FaceAnalyzer, landmark_image
from dynamicid.faces.backends import Resources, create
from dynamicid.faces.caption import caption_many
from dynamicid.faces.face_hash import face_hash
from dynamicid.faces.face_prompt import CLASSIFIER_EMOTIONS
from dynamicid.faces.types import FaceAnalysis, FaceBox
from dynamicid.imagefile import DecodedImage, Rejected, decode_image
from dynamicid.prep import outputs
from dynamicid.prep.config import PrepConfig
from dynamicid.prep.discover import read_limited
from dynamicid.prep.schema import COLUMN_NAMES, STAGE_TIMINGS, empty_row

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the block's wall time, in ms, to `timings[stage]`: the one clock of every stage."""
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - began) * 1000


def _error_text(err: Exception) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _batch_or_singly(run: Callable[[list], Any], items: list) -> tuple[list, list[str | None]]:
    """`run(items)` gives one result per item. If the batch fails, each item alone, so that one bad item
    costs only itself: (results, error texts), with None as the result of an item that failed."""
    try:
        return list(run(items)), [None] * len(items)
    except Exception:
        results, errors = [], []
        for item in items:
            try:
                results.append(run([item])[0])
                errors.append(None)
            except Exception as err:
                results.append(None)
                errors.append(_error_text(err))
        return results, errors


@dataclass
class KeptFace:
    """A face that passed every rule, waiting for the batch stages. It keeps the 512 px crop and the
    embedder's small input, not the decoded photo, so a batch in flight stays small."""

    analysis: FaceAnalysis
    index: int
    timings: dict[str, float]
    facts: dict[str, Any]  # what the caption and the manifest row say of the face
    embed_input: np.ndarray | None = None  # the embedder's crop, until the batch is embedded
    error: str | None = None  # an embedding that failed
    caption: str | None = None
    caption_error: str | None = None
    given_caption: str | None = None  # the URL list's caption (collect's manifest), used instead of a captioner


@dataclass
class FileContext:
    """One input file on its way through the stages."""

    path: str
    relative: str
    identity: str | None
    size: int | None
    problem: str | None  # what the listing found wrong (an unreadable link, a name that is not UTF-8)
    base_row: dict[str, Any]
    start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    data: bytes | None = None
    record_file: str | None = None
    previous: dict | None = None  # the completion record an earlier run left for this input
    image: DecodedImage | None = None  # until the landmark stage is done with the pixels
    decode_scale: float = 1.0  # decoded px per source px: what the manifest's coordinates are scaled back by
    boxes: list[FaceBox] = field(default_factory=list)
    items: list[dict | KeptFace] = field(default_factory=list)  # per face: a finished row or a kept face
    rows: list[dict] | None = None  # set when the file is finished: it leaves the flow
    resumed: bool = False  # its rows are an earlier run's record
    given_caption: str | None = None  # the URL list's caption for this photo, when collect was given one

    @property
    def open(self) -> bool:
        return self.rows is None

    def kept(self) -> list[KeptFace]:
        return [item for item in self.items if isinstance(item, KeptFace)] if self.open else []

    def finish(self, row: dict, timings: dict[str, float] | None = None) -> dict:
        """`row` with its stage timings and the total so far."""
        timings = self.timings if timings is None else timings
        timings["total"] = (time.perf_counter() - self.start) * 1000
        for stage in STAGE_TIMINGS:
            row[f"ms_{stage}"] = float(timings[stage]) if stage in timings else None
        return row

    def end(self, status: str, reason: str, message: str) -> None:
        """The whole file ends here with one row."""
        self.rows = [self.finish(self.base_row | {"status": status, "reason": reason, "message": message})]


class Stage:
    """One step of the flow. `setup` runs once per worker process; `process_batch` gets the open files."""

    name = "stage"
    per_file = True  # each file on its own; False: over every open file of the task at once

    def setup(self, shared: Shared) -> None:
        self.shared = shared

    def begin(self, files: list[FileContext]) -> None:
        """Called once per task with all its files, before any stage runs."""

    def process_batch(self, files: list[FileContext]) -> None:
        for file in files:
            try:
                self.process(file)
            except Exception as err:  # one bad image must never stop the job
                file.end("error", "internal_error", _error_text(err))

    def process(self, file: FileContext) -> None:
        raise NotImplementedError


@dataclass
class Shared:
    """What every stage of one worker shares: the settings, and the models, loaded once, when a file first
    needs them: a rerun whose files all resume starts no model (seconds per worker)."""

    config: PrepConfig
    resources: Resources
    config_hash: str

    given: dict[str, Any] = field(default_factory=dict)  # models set in place of the loaded ones (tests)

    @property
    def analyzer(self) -> FaceAnalyzer:
        return self.given.get("analyzer") or _models(self.config, self.resources)[0]

    @analyzer.setter
    def analyzer(self, model: FaceAnalyzer) -> None:
        self.given["analyzer"] = model

    @property
    def captioner(self) -> Any:
        return self.given.get("captioner") or _models(self.config, self.resources)[1]

    @captioner.setter
    def captioner(self, model: Any) -> None:
        self.given["captioner"] = model


# Loaded models per worker process, by what they depend on: a worker (or a test session) that serves several
# jobs with the same face settings loads them once.
_MODELS: dict[str, tuple[FaceAnalyzer, Any]] = {}


def _models(config: PrepConfig, resources: Resources) -> tuple[FaceAnalyzer, Any]:
    options = config.captioner_options()
    key = repr((config.faces, config.captioner, config.captioner_model, options, resources))
    if key not in _MODELS:
        analyzer = FaceAnalyzer(config.faces, resources=resources)
        captioner = create("captioner", config.captioner, config.captioner_model, resources, **options)
        _MODELS[key] = (analyzer, captioner)
        # The models' many Python objects live as long as the worker: out of the collector's full passes, which
        # otherwise walk them all every few hundred images.
        gc.freeze()
    return _MODELS[key]


_READER: ThreadPoolExecutor | None = None


def _reader() -> ThreadPoolExecutor:
    """The worker's one reader thread (file reads and hashing release the GIL)."""
    global _READER
    if _READER is None:
        _READER = ThreadPoolExecutor(1, thread_name_prefix="prep-read")
    return _READER


class ReadStage(Stage):
    """The bytes and their SHA-256; a file whose record says it is done, with its outputs there, resumes.

    The next file of the task is read, and hashed, on a reader thread while this one goes through the later
    stages, so the core does not wait on the disk: at most two files' bytes are in memory. Its `read` time is
    what the file's turn waited for its bytes."""

    name = "read"

    def setup(self, shared: Shared) -> None:
        super().setup(shared)
        self._limit = shared.config.images.max_bytes
        self._ahead: deque[FileContext] = deque()
        self._reads: dict[int, Future] = {}

    def begin(self, files: list[FileContext]) -> None:
        self._ahead = deque(f for f in files if f.problem is None and not (f.size or 0) > self._limit)
        self._reads = {}
        self._read_ahead()

    def _read_ahead(self) -> None:
        """Keeps one read in flight beyond the file being processed."""
        while self._ahead and not self._reads:
            file = self._ahead.popleft()
            self._reads[id(file)] = _reader().submit(read_limited, file.path, self._limit)

    def _read(self, file: FileContext) -> tuple[bytes, str]:
        pending = self._reads.pop(id(file), None)
        if pending is None:  # not listed by `begin`: read it now
            return read_limited(file.path, self._limit)
        self._read_ahead()
        return pending.result()

    def process(self, file: FileContext) -> None:
        limit = self._limit
        try:
            with timed(file.timings, "read"):
                if file.problem is not None:
                    raise OSError(file.problem)
                if file.size is not None and file.size > limit:  # refused before any byte is read
                    raise Rejected("too_large_file", f"{file.size} bytes is over the limit of {limit}")
                file.data, sha = self._read(file)  # a file that grew since is cut off
        except OSError as err:
            file.timings.pop("read", None)
            return file.end("error", "read_error", f"{file.relative}: {err}")
        except Rejected as rejection:
            file.timings.pop("read", None)
            return file.end("rejected", rejection.reason, rejection.message)
        file.base_row |= {"source_bytes": len(file.data), "sha256": sha}
        file.record_file = outputs.record_path(self.shared.config.output, file.relative)
        file.previous = outputs.load_record(file.record_file)
        if self._resumable(file.previous, sha, file.identity):
            resumed = {"source_path": file.path, "relative_path": file.relative, "resumed": True}
            file.rows, file.resumed = [row | resumed for row in file.previous["rows"]], True

    def _resumable(self, record: dict | None, sha: str, identity: str | None) -> bool:
        """Whether the record is this content, these settings and this identity, with every output present."""
        wanted = (sha, self.shared.config_hash, identity)
        if not record or (record.get("sha256"), record.get("config_hash"), record.get("identity")) != wanted:
            return False
        for row in record["rows"]:
            if row["status"] == "ok":
                paths = outputs.face_paths(self.shared.config.output, identity, row["name"])
                problem = outputs.face_files_problem(paths, row.get("embedding_dim"))
                if problem is not None:
                    logger.info("rewriting the outputs of %s: %s", row.get("relative_path", row["name"]), problem)
                    return False
        return True


class DecodeStage(Stage):
    name = "decode"

    def process(self, file: FileContext) -> None:
        try:
            with timed(file.timings, "decode"):
                file.image = decode_image(file.data or b"", self.shared.config.images)
                file.decode_scale = file.image.decode_scale
        except Rejected as rejection:
            return file.end("rejected", rejection.reason, rejection.message)
        finally:
            file.data = None  # the bytes are not needed again
        image = file.image
        file.base_row |= {
            "format": image.format,
            "width": image.width,
            "height": image.height,
            "exif_rotated": image.exif_rotated,
            "detector_model": self.shared.analyzer.detector.model_id,
        }


class DetectStage(Stage):
    """Faces, and the rules on them: the multi-face policy and the smallest face side."""

    name = "detect"

    def process(self, file: FileContext) -> None:
        config, image = self.shared.config, file.image
        with timed(file.timings, "detect"):
            boxes = self.shared.analyzer.detect(image.rgb)
        file.base_row["faces_detected"] = len(boxes)
        if not boxes:
            return file.end("rejected", "no_face", "no face was detected")
        if config.multi_face == "skip" and len(boxes) > 1:
            return file.end("rejected", "multiple_faces", f"{len(boxes)} faces detected and multi_face is skip")
        chosen = boxes if config.multi_face == "all" else boxes[:1]
        minimum = config.face_rules.min_face_side
        file.boxes = [b for b in chosen if min(b.width, b.height) >= minimum * image.decode_scale]
        if not file.boxes:
            side = min(chosen[0].width, chosen[0].height) / image.decode_scale
            return file.end(
                "rejected", "face_too_small", f"the face is {side:.0f} px, below the minimum of {minimum} px"
            )


class LandmarkStage(Stage):
    """Landmarks, alignment, pose and sharpness per face (one call per photo); the embedder's crop is cut here,
    while the photo is in memory, and the photo is then let go."""

    name = "landmarks"

    def process(self, file: FileContext) -> None:
        analyzer, image = self.shared.analyzer, file.image
        analyses = analyzer.analyze_faces(image.rgb, file.boxes, embed=False, expressions=False)
        minimum = self.shared.config.face_rules.min_sharpness
        for index, analysis in enumerate(analyses):
            timings = dict(file.timings)
            for stage, ms in analysis.timings_ms.items():
                timings[stage] = timings.get(stage, 0.0) + ms
            if analysis.sharpness < minimum:
                row = file.base_row | {
                    "face_index": index,
                    "status": "rejected",
                    "reason": "too_blurry",
                    "message": f"face sharpness {analysis.sharpness:.1f} is below {minimum}",
                    "sharpness": analysis.sharpness,
                }
                file.items.append(file.finish(row, timings))
                continue
            with timed(timings, "embed"):
                crop = analyzer.embed_input(image.rgb, analysis)  # the network runs over the batch
            given = file.given_caption if self.shared.config.given_captions else None
            file.items.append(KeptFace(analysis, index, timings, _facts(analysis, image), crop, given_caption=given))
        file.image = None  # the pixels are let go; the faces keep their crops


def _unit(vector) -> list[float]:
    """The embedding as the manifest holds it: float32, unit length, so a dot product is the cosine."""
    values = np.asarray(vector, dtype=np.float32)
    return (values / max(float(np.linalg.norm(values)), 1e-12)).tolist()


def _facts(analysis: FaceAnalysis, image: DecodedImage) -> dict[str, Any]:
    return {
        "face_prompt": analysis.face_prompt,
        "emotion": analysis.emotion,
        "pitch": analysis.pose.pitch,
        "yaw": analysis.pose.yaw,
        "roll": analysis.pose.roll,
        "smile": analysis.expression.smile,
        "mouth_open": analysis.expression.mouth_open,
        "eyes_closed": analysis.expression.eyes_closed,
        "brows_raised": analysis.expression.brows_raised,
        "grayscale": image.grayscale,
    }


class FaceBatchStage(Stage):
    """A stage over every kept face of the task at once; the time is shared equally among the faces."""

    per_file = False

    def process_batch(self, files: list[FileContext]) -> None:
        faces = [face for file in files for face in file.kept()]
        if faces:
            self.process_faces(faces)

    def process_faces(self, faces: list[KeptFace]) -> None:
        raise NotImplementedError


class EmbedStage(FaceBatchStage):
    """The embedding network over the batch; if the batch fails, face by face, and a face that still fails
    becomes an error row (retried by the next run)."""

    name = "embed"

    def process_faces(self, faces: list[KeptFace]) -> None:
        embedder = self.shared.analyzer.embedder
        clock: dict[str, float] = {}
        with timed(clock, "embed"):
            vectors, errors = _batch_or_singly(
                lambda items: embedder.embed_prepared([f.embed_input for f in items]), faces
            )
        for face, vector, error in zip(faces, vectors, errors):
            face.analysis.embedding, face.embed_input, face.error = vector, None, error
            face.timings["embed"] = face.timings.get("embed", 0.0) + clock["embed"] / len(faces)


class ExpressionStage(FaceBatchStage):
    """The expression classifier over the batch: the emotion, the face prompt and the probabilities go into
    each face's facts (the caption then carries the face prompt)."""

    name = "expression"

    def process_faces(self, faces: list[KeptFace]) -> None:
        self.shared.analyzer.classify_expressions([face.analysis for face in faces])
        for face in faces:
            analysis = face.analysis
            face.facts |= {"emotion": analysis.emotion, "face_prompt": analysis.face_prompt}
            if analysis.emotion_probabilities is not None:
                probabilities = zip(CLASSIFIER_EMOTIONS, analysis.emotion_probabilities)
                face.facts |= {f"emotion_{word}": float(p) for word, p in probabilities}
            face.timings["prompt"] = analysis.timings_ms.get("prompt", 0.0)


class CaptionStage(FaceBatchStage):
    name = "caption"

    def process_faces(self, faces: list[KeptFace]) -> None:
        for face in faces:
            if face.given_caption:  # the URL list's own caption: no captioner (nor its model) is needed
                face.caption, face.timings["caption"] = face.given_caption, 0.0
        faces = [face for face in faces if not face.given_caption]
        if not faces:
            return
        captioner, clock = self.shared.captioner, {}
        with timed(clock, "caption"):
            captions, errors = _batch_or_singly(
                lambda items: caption_many(captioner, [f.analysis.aligned for f in items], [f.facts for f in items]),
                faces,
            )
        for face, caption, error in zip(faces, captions, errors):
            face.caption, face.caption_error = caption, error
            face.timings["caption"] = clock["caption"] / len(faces)


class WriteStage(Stage):
    """Each kept face's four files. (The completion record follows, for every file read: `PrepStage.record`.)"""

    name = "write"

    def process(self, file: FileContext) -> None:
        file.rows = [self._write_face(file, item) if isinstance(item, KeptFace) else item for item in file.items]

    def _write_face(self, file: FileContext, face: KeptFace) -> dict:
        failed = ("internal_error", face.error) if face.error is not None else None
        if failed is None and face.caption is None:
            failed = ("caption_error", face.caption_error or "no caption")
        if failed is not None:
            row = file.base_row | {
                "face_index": face.index,
                "status": "error",
                "reason": failed[0],
                "message": failed[1],
            }
            return file.finish(row, face.timings)
        config = self.shared.config
        name = outputs.face_name(
            outputs.base_name(file.relative, file.base_row["sha256"]), face.index, config.multi_face
        )
        with timed(face.timings, "write"):
            self._write_files(outputs.face_paths(config.output, file.identity, name), face, file.base_row["sha256"])
        return file.finish(file.base_row | self._face_columns(face, name, file.decode_scale), face.timings)

    def _write_files(self, paths: dict[str, str], face: KeptFace, sha256: str) -> None:
        import torch

        analysis, embedder = face.analysis, self.shared.analyzer.embedder
        jpeg = io.BytesIO()
        Image.fromarray(analysis.aligned).save(jpeg, format="JPEG", quality=self.shared.config.jpeg_quality)
        sheet = landmark_image.compose_landmark_png(
            analysis.aligned_landmarks, analysis.landmark_convention, self.shared.config.faces.aligned_size
        )
        # Written in a fixed order; the completion record, written after all four, is what marks the image done.
        outputs.write_atomic(paths["jpg"], jpeg.getvalue())
        outputs.write_atomic(paths["png"], landmark_image.encode_landmark_png(sheet, analysis.landmark_convention))
        outputs.write_atomic(paths["txt"], (face.caption + "\n").encode("utf-8"))
        embedding = torch.from_numpy(np.asarray(analysis.embedding, dtype=np.float32))
        payload = {
            "embedding": embedding,
            "model": embedder.model_id,
            "dim": int(embedder.dim),
            "sha256": sha256,
            "face_index": face.index,
        }
        outputs.save_embedding(paths["pt"], payload)

    def _face_columns(self, face: KeptFace, name: str, scale: float) -> dict[str, Any]:
        """The manifest columns of a kept face; coordinates in full-resolution source pixels (the decode
        may have been reduced)."""
        analysis, analyzer = face.analysis, self.shared.analyzer
        affine = analysis.affine.copy()
        affine[:, :2] *= scale
        facts = {k: float(v) if isinstance(v, float | np.floating) else v for k, v in face.facts.items()}
        facts.pop("grayscale")
        return {
            "name": name,
            "face_index": face.index,
            "status": "ok",
            "bbox": [v / scale for v in analysis.box.as_list()],
            "landmarks": (analysis.landmarks / scale).astype(float).tolist(),
            "aligned_landmarks": analysis.aligned_landmarks.astype(float).tolist(),
            "landmark_convention": analysis.landmark_convention,
            "affine": affine.tolist(),
            "landmarks_model": analyzer.landmark_model.model_id,
            "expression_model": analyzer.backend_ids["expression"],
            "embedding_model": analyzer.embedder.model_id,
            "embedding_dim": int(analyzer.embedder.dim),
            "embedding": _unit(analysis.embedding),
            "face_hash": face_hash(analysis.aligned),
            "captioner_model": GIVEN_CAPTION if face.given_caption else self.shared.captioner.model_id,
            "caption": face.caption,
            "sharpness": analysis.sharpness,
        } | facts


GIVEN_CAPTION = "given (the URL list's caption)"
STAGES = (ReadStage, DecodeStage, DetectStage, LandmarkStage, EmbedStage, ExpressionStage, CaptionStage, WriteStage)


class PrepStage:
    """The stages, in order, for one worker: `setup` once, then `process_batch` per Spark batch."""

    def __init__(self, config: PrepConfig, resources: Resources | None = None):
        self.shared = Shared(config, resources or Resources(), config.config_hash())
        self.stages = [stage() for stage in STAGES]

    @property
    def config(self) -> PrepConfig:
        return self.shared.config

    def setup(self) -> PrepStage:
        for stage in self.stages:
            stage.setup(self.shared)
        return self

    def process_batch(self, files: pd.DataFrame) -> pd.DataFrame:
        listed = [
            (
                item.path,
                item.relative,
                item.identity,
                getattr(item, "size", None),
                getattr(item, "problem", None),
                getattr(item, "given_caption", None),
            )
            for item in files.itertuples(index=False)
        ]
        return pd.DataFrame(self.process(listed), columns=COLUMN_NAMES)

    def process_file(
        self, path: str, relative: str, identity: str | None, size: int | None = None, problem: str | None = None
    ) -> list[dict]:
        """The rows of one file (a batch of one)."""
        return self.process([(path, relative, identity, size, problem)])

    def process(self, listed: list[tuple]) -> list[dict]:
        """Every file through every stage; the rows of each file, in input order. Per-file stages in a row run
        file by file (one decoded photo in memory at a time); a batch stage runs over every open file."""
        self.setup()
        files = [self._context(*item) for item in listed]
        for stage in self.stages:
            stage.begin(files)
        for group in self._groups():
            if group[0].per_file:
                for file in files:
                    for stage in group:
                        self._run(stage, [file])
            else:
                self._run(group[0], files)
        for file in files:
            self.record(file)
        return [row for file in files for row in file.rows or []]

    def record(self, file: FileContext) -> None:
        """The completion record of a file that was read and came through without an error: kept or rejected,
        it is what marks the input done for the next run (a file with an error is retried)."""
        if file.record_file is None or file.resumed or not file.rows:
            return
        if any(row["status"] == "error" for row in file.rows):
            return
        record = {
            "sha256": file.base_row["sha256"],
            "config_hash": self.shared.config_hash,
            "identity": file.base_row["identity"],
            "host": socket.gethostname(),
            "rows": file.rows,
        }
        outputs.write_record(file.record_file, record)

    def _groups(self) -> list[list[Stage]]:
        """The stages, consecutive per-file ones grouped together, each batch stage alone."""
        groups: list[list[Stage]] = []
        for stage in self.stages:
            if stage.per_file and groups and groups[-1][0].per_file:
                groups[-1].append(stage)
            else:
                groups.append([stage])
        return groups

    def _run(self, stage: Stage, files: list[FileContext]) -> None:
        open_files = [file for file in files if file.open]
        if not open_files:
            return
        try:
            stage.process_batch(open_files)
        except Exception:  # a batch step failed: each file alone, so only the one that broke it fails
            for file in open_files:
                self._alone(stage, file)

    def _alone(self, stage: Stage, file: FileContext) -> None:
        if not file.open:
            return
        try:
            stage.process_batch([file])
        except Exception as err:  # one bad image must never stop the job
            file.end("error", "internal_error", _error_text(err))

    def _context(
        self,
        path: str,
        relative: str,
        identity: str | None,
        size: int | None,
        problem: str | None,
        given_caption: str | None = None,
    ) -> FileContext:
        base_row = empty_row() | {
            "source_path": path,
            "relative_path": relative,
            "identity": identity,
            "config_hash": self.shared.config_hash,
            "resumed": False,
        }
        return FileContext(path, relative, identity, size, problem, base_row, given_caption=given_caption)


def stage_for(config: PrepConfig, resources: Resources | None = None) -> PrepStage:
    """The stages for a Spark task, with the task's threads set; their models are the worker's, loaded once
    (`_models`) and then shared by every task and batch."""
    resources = resources or Resources()
    _limit_threads(resources.threads or 1)
    return PrepStage(config, resources)


def _limit_threads(threads: int) -> None:
    """Spark runs one task per core it gives: libraries that start a thread per core of the machine would
    oversubscribe it. OpenCV and torch are dependencies of the toolkit, so both are there."""
    import cv2
    import torch

    cv2.setNumThreads(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

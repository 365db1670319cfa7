"""The per-image work of `prep`, as a stage: `setup` loads the models once per worker process,
`process_batch` turns a batch of input files into manifest rows and written outputs."""

from __future__ import annotations

import io
import os
import socket
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from dynamicid.faces import FaceAnalyzer, landmark_image
from dynamicid.faces.backends import create
from dynamicid.faces.caption import caption_many
from dynamicid.faces.face_prompt import CLASSIFIER_EMOTIONS
from dynamicid.faces.types import FaceAnalysis
from dynamicid.imagefile import DecodedImage, Rejected, decode_image
from dynamicid.prep import outputs
from dynamicid.prep.config import PrepConfig
from dynamicid.prep.discover import read_limited
from dynamicid.prep.schema import COLUMN_NAMES, STAGE_TIMINGS, empty_row


def _error_text(err: Exception) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _batch_or_singly(run, items: list) -> tuple[list, list[str | None]]:
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
class _KeptFace:
    """A face analysed, waiting for the batch steps: embedding, expression and caption run over all the
    kept faces of a Spark task at once. It keeps the 512 px crop and the embedder's small input, not the
    decoded photo, so a batch in flight stays small."""

    decode_scale: float
    analysis: FaceAnalysis
    index: int
    base: str
    base_row: dict
    timings: dict
    start: float
    facts: dict
    embed_input: np.ndarray | None = None  # the embedder's small crop, until the batch is embedded
    embed_error: str | None = None
    caption: str | None = None
    caption_error: str | None = None


@dataclass
class _FileWork:
    """One input file in flight: its finished rows, or its items (rows and kept faces) still to write."""

    base_row: dict
    start: float
    record_file: str | None = None
    previous: dict | None = None  # the completion record an earlier run left for this input (resume reads it)
    items: list = field(default_factory=list)
    rows: list[dict] | None = None

    def kept_faces(self) -> list[_KeptFace]:
        return [item for item in self.items if isinstance(item, _KeptFace)] if self.rows is None else []


class PrepStage:
    def __init__(self, config: PrepConfig):
        self.config = config
        self.config_hash = config.config_hash()
        self.analyzer: FaceAnalyzer | None = None
        self.captioner = None

    def setup(self) -> PrepStage:
        if self.analyzer is None:
            self.analyzer = FaceAnalyzer(self.config.faces)
            self.captioner = create(
                "captioner", self.config.captioner, self.config.captioner_model, **self.config.captioner_options()
            )
        return self

    # -- one batch -------------------------------------------------------------------------------
    def process_batch(self, files: pd.DataFrame) -> pd.DataFrame:
        listed = [
            (item.path, item.relative, item.identity, getattr(item, "size", None), getattr(item, "problem", None))
            for item in files.itertuples(index=False)
        ]
        return pd.DataFrame(self._process(listed), columns=COLUMN_NAMES)

    def process_file(
        self, path: str, relative: str, identity: str | None, size: int | None = None, problem: str | None = None
    ) -> list[dict]:
        """The rows of one file (a batch of one)."""
        return self._process([(path, relative, identity, size, problem)])

    def _process(self, files: list[tuple]) -> list[dict]:
        """Analyse every file; embed, classify and caption all kept faces together; then write each file's outputs."""
        works = [self._start_file(*file) for file in files]
        kept = [face for work in works for face in work.kept_faces()]
        self._embed(kept)
        self._classify_expressions(kept)
        self._caption(kept)
        return [row for work in works for row in self._finish_file(work)]

    # -- one file, in three steps: analyse, (caption with the batch), write ------------------------
    def _start_file(
        self, path: str, relative: str, identity: str | None, size: int | None = None, problem: str | None = None
    ) -> _FileWork:
        start = time.perf_counter()
        base_row = empty_row() | {
            "source_path": path,
            "relative_path": relative,
            "identity": identity,
            "config_hash": self.config_hash,
            "resumed": False,
        }
        work = _FileWork(base_row, start)
        timings: dict[str, float] = {}
        try:
            data, sha = self._read(path, size, problem)
        except OSError as err:
            work.rows = [
                self._finish(
                    base_row | {"status": "error", "reason": "read_error", "message": f"{relative}: {err}"},
                    timings,
                    start,
                )
            ]
            return work
        except Rejected as rejection:
            work.rows = [
                self._finish(
                    base_row | {"status": "rejected", "reason": rejection.reason, "message": rejection.message},
                    timings,
                    start,
                )
            ]
            return work
        timings["read"] = (time.perf_counter() - start) * 1000
        base_row |= {"source_bytes": len(data), "sha256": sha}
        base = outputs.base_name(relative, sha)
        work.record_file = outputs.record_path(self.config.output, relative)
        work.previous = outputs.load_record(work.record_file)
        if self._resumable(work.previous, sha, identity):
            work.rows = [
                row | {"source_path": path, "relative_path": relative, "resumed": True} for row in work.previous["rows"]
            ]
            return work
        try:
            work.items = self._analyse(data, base, base_row, timings, start)
        except Exception as err:  # one bad image must never stop the job
            work.rows = [self._internal_error(base_row, err, timings, start)]
        return work

    def _read(self, path: str, size: int | None, problem: str | None) -> tuple[bytes, str]:
        """The file's bytes and SHA-256. A file over the byte limit is refused by the listing's size, before
        any byte is read, and a file that grew since is cut off as it streams in."""
        if problem is not None:
            raise OSError(problem)
        limit = self.config.images.max_bytes
        if size is not None and size > limit:
            raise Rejected("too_large_file", f"{size} bytes is over the limit of {limit}")
        return read_limited(path, limit)

    def _finish_file(self, work: _FileWork) -> list[dict]:
        if work.rows is not None:
            return work.rows
        try:
            rows = [self._write_face(item) if isinstance(item, _KeptFace) else item for item in work.items]
        except Exception as err:
            return [self._internal_error(work.base_row, err, {}, work.start)]
        if all(row["status"] != "error" for row in rows):  # an error is retried by the next run
            outputs.write_record(
                work.record_file,
                {
                    "sha256": work.base_row["sha256"],
                    "config_hash": self.config_hash,
                    "identity": work.base_row["identity"],
                    "host": socket.gethostname(),
                    "rows": rows,
                },
            )
        return rows

    def _internal_error(self, base_row: dict, err: Exception, timings: dict, start: float) -> dict:
        return self._finish(
            base_row | {"status": "error", "reason": "internal_error", "message": _error_text(err)}, timings, start
        )

    def _resumable(self, record: dict | None, sha: str, identity: str | None) -> bool:
        """Whether the record is this content, these settings and this identity, with every output present."""
        if not record or (record.get("sha256"), record.get("config_hash"), record.get("identity")) != (
            sha,
            self.config_hash,
            identity,
        ):
            return False
        for row in record["rows"]:
            if row["status"] == "ok":
                paths = outputs.face_paths(self.config.output, identity, row["name"])
                if not all(os.path.exists(p) for p in paths.values()):
                    return False
        return True

    def _finish(self, row: dict, timings: dict[str, float], start: float) -> dict:
        timings["total"] = (time.perf_counter() - start) * 1000
        for stage in STAGE_TIMINGS:
            row[f"ms_{stage}"] = float(timings[stage]) if stage in timings else None
        return row

    def _analyse(self, data: bytes, base: str, base_row: dict, timings: dict, start: float) -> list:
        """Rows for rejected faces and `_KeptFace`s for the rest, in face order."""
        self.setup()
        rules = self.config.images
        clock = time.perf_counter()
        try:
            image = decode_image(data, rules)
        except Rejected as rejection:
            timings["decode"] = (time.perf_counter() - clock) * 1000
            return [
                self._finish(
                    base_row | {"status": "rejected", "reason": rejection.reason, "message": rejection.message},
                    timings,
                    start,
                )
            ]
        timings["decode"] = (time.perf_counter() - clock) * 1000
        base_row |= {
            "format": image.format,
            "width": image.width,
            "height": image.height,
            "exif_rotated": image.exif_rotated,
            "detector_model": self.analyzer.detector.model_id,
        }

        clock = time.perf_counter()
        boxes = self.analyzer.detect(image.rgb)
        timings["detect"] = (time.perf_counter() - clock) * 1000
        base_row["faces_detected"] = len(boxes)

        def reject(reason: str, message: str) -> list[dict]:
            return [
                self._finish(base_row | {"status": "rejected", "reason": reason, "message": message}, timings, start)
            ]

        if not boxes:
            return reject("no_face", "no face was detected")
        if self.config.multi_face == "skip" and len(boxes) > 1:
            return reject("multiple_faces", f"{len(boxes)} faces detected and multi_face is skip")
        chosen = boxes if self.config.multi_face == "all" else boxes[:1]
        min_side = self.config.face_rules.min_face_side * image.decode_scale
        large_enough = [b for b in chosen if min(b.width, b.height) >= min_side]
        if not large_enough:
            side = min(chosen[0].width, chosen[0].height) / image.decode_scale
            return reject(
                "face_too_small",
                f"the face is {side:.0f} px, below the minimum of {self.config.face_rules.min_face_side} px",
            )

        items = []
        # Landmarks in one batch; the expression classifier runs later, over the whole task's faces.
        analyses = self.analyzer.analyze_faces(image.rgb, large_enough, embed=False, expressions=False)
        for index, analysis in enumerate(analyses):
            face_timings = dict(timings)
            for stage, ms in analysis.timings_ms.items():
                face_timings[stage] = face_timings.get(stage, 0.0) + ms
            minimum = self.config.face_rules.min_sharpness
            if analysis.sharpness < minimum:
                row = base_row | {
                    "face_index": index,
                    "status": "rejected",
                    "reason": "too_blurry",
                    "message": f"face sharpness {analysis.sharpness:.1f} is below {minimum}",
                    "sharpness": analysis.sharpness,
                }
                items.append(self._finish(row, face_timings, start))
                continue
            items.append(self._keep(image, analysis, index, base, base_row, face_timings, start))
        return items

    def _keep(
        self,
        image: DecodedImage,
        analysis: FaceAnalysis,
        index: int,
        base: str,
        base_row: dict,
        timings: dict,
        start: float,
    ) -> _KeptFace:
        clock = time.perf_counter()
        embed_input = self.analyzer.embed_input(image.rgb, analysis)  # the crop; the network runs per batch
        timings["embed"] = (time.perf_counter() - clock) * 1000
        facts = {
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
        return _KeptFace(image.decode_scale, analysis, index, base, base_row, timings, start, facts, embed_input)

    def _embed(self, faces: list[_KeptFace]) -> None:
        """The embedding network over every kept face of the batch at once; if the batch fails, face by
        face, and a face that still fails becomes an error row (retried by the next run)."""
        if not faces:
            return
        embedder = self.analyzer.embedder
        clock = time.perf_counter()
        vectors, errors = _batch_or_singly(lambda items: embedder.embed_prepared([f.embed_input for f in items]), faces)
        share = (time.perf_counter() - clock) * 1000 / len(faces)
        for face, vector, error in zip(faces, vectors, errors):
            face.analysis.embedding, face.embed_input, face.embed_error = vector, None, error
            face.timings["embed"] = face.timings.get("embed", 0.0) + share

    def _classify_expressions(self, faces: list[_KeptFace]) -> None:
        """The expression classifier over every kept face of the batch at once; the emotion, the face prompt
        and the probabilities go into each face's facts (the caption then carries the face prompt)."""
        self.setup()
        self.analyzer.classify_expressions([face.analysis for face in faces])
        for face in faces:
            analysis = face.analysis
            face.facts |= {"emotion": analysis.emotion, "face_prompt": analysis.face_prompt}
            if analysis.emotion_probabilities is not None:
                face.facts |= {
                    f"emotion_{w}": float(p) for w, p in zip(CLASSIFIER_EMOTIONS, analysis.emotion_probabilities)
                }
            face.timings["prompt"] = analysis.timings_ms.get("prompt", 0.0)

    def _caption(self, faces: list[_KeptFace]) -> None:
        """Caption the faces in one call (the captioner batches); each face is charged an equal share."""
        if not faces:
            return
        self.setup()
        clock = time.perf_counter()
        captions, errors = _batch_or_singly(
            lambda items: caption_many(self.captioner, [f.analysis.aligned for f in items], [f.facts for f in items]),
            faces,
        )
        share = (time.perf_counter() - clock) * 1000 / len(faces)
        for face, caption, error in zip(faces, captions, errors):
            face.caption, face.caption_error = caption, error
            face.timings["caption"] = share

    def _write_face(self, face: _KeptFace) -> dict:
        analysis, index, base_row, timings = face.analysis, face.index, face.base_row, face.timings
        if face.embed_error is not None:
            row = base_row | {
                "face_index": index,
                "status": "error",
                "reason": "internal_error",
                "message": face.embed_error,
            }
            return self._finish(row, timings, face.start)
        if face.caption is None:
            row = base_row | {
                "face_index": index,
                "status": "error",
                "reason": "caption_error",
                "message": face.caption_error or "no caption",
            }
            return self._finish(row, timings, face.start)
        caption = face.caption
        clock = time.perf_counter()
        name = outputs.face_name(face.base, index, self.config.multi_face)
        paths = outputs.face_paths(self.config.output, base_row["identity"], name)
        jpeg = io.BytesIO()
        Image.fromarray(analysis.aligned).save(jpeg, format="JPEG", quality=self.config.jpeg_quality)
        sheet = landmark_image.compose_landmark_png(
            analysis.aligned_landmarks, analysis.landmark_convention, self.config.faces.aligned_size
        )
        embedder = self.analyzer.embedder
        # Written in a fixed order; the completion record, written after all four, is what marks the image done.
        outputs.write_atomic(paths["jpg"], jpeg.getvalue())
        outputs.write_atomic(paths["png"], landmark_image.encode_landmark_png(sheet, analysis.landmark_convention))
        outputs.write_atomic(paths["txt"], (caption + "\n").encode("utf-8"))
        import torch

        outputs.save_embedding(
            paths["pt"],
            {
                "embedding": torch.from_numpy(np.asarray(analysis.embedding, dtype=np.float32)),
                "model": embedder.model_id,
                "dim": int(embedder.dim),
                "sha256": base_row["sha256"],
                "face_index": index,
            },
        )
        timings["write"] = (time.perf_counter() - clock) * 1000

        # Coordinates go back to full-resolution source pixels (the decode may have been reduced).
        scale = face.decode_scale
        affine = analysis.affine.copy()
        affine[:, :2] *= scale
        row = (
            base_row
            | {
                "name": name,
                "face_index": index,
                "status": "ok",
                "bbox": [v / scale for v in analysis.box.as_list()],
                "landmarks": (analysis.landmarks / scale).astype(float).tolist(),
                "aligned_landmarks": analysis.aligned_landmarks.astype(float).tolist(),
                "landmark_convention": analysis.landmark_convention,
                "affine": affine.tolist(),
                "landmarks_model": self.analyzer.landmark_model.model_id,
                "expression_model": self.analyzer.backend_ids["expression"],
                "embedding_model": embedder.model_id,
                "embedding_dim": int(embedder.dim),
                "captioner_model": self.captioner.model_id,
                "caption": caption,
                "sharpness": analysis.sharpness,
            }
            | {
                k: float(v) if isinstance(v, (float, np.floating)) else v
                for k, v in face.facts.items()
                if k != "grayscale"
            }
        )
        return self._finish(row, timings, face.start)


_STAGES: dict[str, PrepStage] = {}


def stage_for(config: PrepConfig) -> PrepStage:
    """One stage per worker process and configuration: models load once, then serve every batch."""
    key = repr(config)
    if key not in _STAGES:
        _limit_threads()
        _STAGES[key] = PrepStage(config)
    return _STAGES[key]


def _limit_threads() -> None:
    # Spark runs one task per core; libraries that spawn their own threads would oversubscribe.
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass

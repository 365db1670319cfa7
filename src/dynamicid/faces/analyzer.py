"""FaceAnalyzer: detection, landmarks, alignment, pose, expression, face prompt and embedding.

The one implementation of face analysis: `prep`, generation and eval all call it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from dynamicid.faces import alignment, expression, face_prompt, pose
from dynamicid.faces.backends import BackendError, Resources, available, create
from dynamicid.faces.types import FaceAnalysis, FaceBox
from dynamicid.options import check_limits, option

FIVE_POINT_SOURCES = ("auto", "detector", "landmarks")
EXPRESSION_SOURCES = ("fer", "landmarks")


def _named(what: str, stage: str):
    """Help text that lists the registered backends when the help is shown (plugins register late)."""
    return lambda: f"{what} ({', '.join(available(stage))})"


@dataclass(frozen=True)
class FaceAnalysisConfig:
    """The face analysis every command shares: which backends, from which model folders, at which sizes."""

    detector: str = option("dlib-hog", _named("face detector", "detector"))
    detector_model: str | None = option(None, "model folder for the face detector (e.g. InsightFace buffalo_l)")
    landmarks: str = option("dlib-68", _named("landmark model", "landmarks"))
    landmarks_model: str | None = option(None, "model folder for the landmark model")
    embedder: str = option("dlib-resnet", _named("identity embedder", "embedder"))
    embedder_model: str | None = option(None, "model folder for the identity embedder")
    aligned_size: int = option(512, "side of the aligned face crop, px", limits=(64, 4096))
    # 7 ms less per photo than 640, and the upsampled retry still finds small faces
    detect_side: int = option(512, "detection runs on the photo shrunk to at most this many px", limits=(64, 16384))
    min_detection_score: float | None = option(
        None, "drop detections scoring below this (default: the detector's own; dlib-hog 0.25)", limits=(-100, 100)
    )
    five_points: str = option(
        "auto",
        "where the embedder's five alignment points come from: the detector's keypoints when it gives them, "
        "else the landmarks' (auto, as InsightFace's own pipeline does); only the detector's; only the landmarks'",
        choices=FIVE_POINT_SOURCES,
    )
    expression: str = option(
        "fer",
        "the face prompt's emotion: the shipped FER2013 classifier, all seven emotions (fer), or landmark "
        "geometry alone: happy, surprise or neutral (landmarks)",
        choices=EXPRESSION_SOURCES,
    )

    def __post_init__(self) -> None:
        check_limits(self)
        if self.min_detection_score is not None:
            from dynamicid.faces.backends.base import check_detection_score

            check_detection_score(self.detector, self.min_detection_score)

    def identity(self) -> dict:
        return asdict(self) | {"template": alignment.TEMPLATE_VERSION, "pose_model": pose.MODEL_VERSION}


@dataclass(frozen=True)
class FaceRules:
    """What a found face must be to be kept."""

    min_face_side: int = option(40, "reject faces smaller than this in the source photo (px)", limits=(1, 65535))
    min_sharpness: float = option(
        20.0, "reject faces blurrier than this (Laplacian variance of the aligned face at 128 px)", limits=(0, 1e9)
    )

    def __post_init__(self) -> None:
        check_limits(self)


class _Clock:
    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now


class FaceAnalyzer:
    """Builds its backends once (they load their models in their constructors)."""

    def __init__(
        self, config: FaceAnalysisConfig | None = None, with_embedder: bool = True, resources: Resources | None = None
    ):
        """`resources`: the GPU and threads the caller was given (prep's Spark task), passed to the backends."""
        self.config = config or FaceAnalysisConfig()
        c = self.config
        self.detector = create(
            "detector",
            c.detector,
            c.detector_model,
            resources,
            detect_side=c.detect_side,
            min_score=c.min_detection_score,
        )
        self.landmark_model = create("landmarks", c.landmarks, c.landmarks_model, resources)
        self.embedder = create("embedder", c.embedder, c.embedder_model, resources) if with_embedder else None
        self._check_five_points()
        if c.expression not in EXPRESSION_SOURCES:
            raise BackendError(f"expression must be one of {', '.join(EXPRESSION_SOURCES)}, not {c.expression!r}")
        from dynamicid.faces import emotion  # torch: loaded with the analyzer, not with its config

        self.expression_model = emotion.ExpressionClassifier() if c.expression == "fer" else None
        provided = getattr(self.landmark_model, "conventions", (self.landmark_model.convention,))
        if "ibug68" not in provided:
            raise BackendError(
                f"landmark backend {c.landmarks!r} gives {', '.join(provided)} points; the face prompt "
                "needs the 68-point (ibug68) layout as well"
            )

    def _check_five_points(self) -> None:
        choice = self.config.five_points
        if choice not in FIVE_POINT_SOURCES:
            raise BackendError(f"five_points must be one of {', '.join(FIVE_POINT_SOURCES)}, not {choice!r}")
        if choice == "detector" and not getattr(self.detector, "gives_keypoints", False):
            model = getattr(getattr(self.detector, "model", None), "path", self.config.detector_model)
            raise BackendError(
                f"five_points is 'detector' but the {self.config.detector} detector ({model}) gives no keypoints "
                "(an SCRFD model without the keypoint outputs has 6 or 10 outputs, not 9 or 15). Use a detector "
                "with keypoints (det_10g.onnx, scrfd_*_bnkps.onnx), or set five_points to 'auto' or 'landmarks'."
            )

    @property
    def backend_ids(self) -> dict[str, str]:
        ids = {
            "detector": self.detector.model_id,
            "landmarks": self.landmark_model.model_id,
            "expression": self.expression_model.model_id if self.expression_model else "landmark-cues",
        }
        if self.embedder is not None:
            ids["embedder"] = self.embedder.model_id
        return ids

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces, largest first."""
        return sorted(self.detector.detect(rgb), key=lambda b: b.area, reverse=True)

    def landmark_sets(self, rgb: np.ndarray, boxes: list[FaceBox]) -> list[dict[str, np.ndarray]]:
        """Every landmark layout for each face; one batch when the backend takes batches."""
        model = self.landmark_model
        if hasattr(model, "landmarks_batch"):
            return [{model.convention: points} for points in model.landmarks_batch(rgb, boxes)]
        if hasattr(model, "landmark_sets"):
            return [model.landmark_sets(rgb, box) for box in boxes]
        return [{model.convention: model.landmarks(rgb, box)} for box in boxes]

    def analyze_faces(
        self, rgb: np.ndarray, boxes: list[FaceBox], embed: bool = True, expressions: bool = True
    ) -> list[FaceAnalysis]:
        """Every face of one image. expressions=False leaves the classifier to a later, larger batch
        (`classify_expressions`), as prep does for a whole Spark task; until then the emotion is the landmarks'."""
        started = time.perf_counter()
        all_sets = self.landmark_sets(rgb, boxes)
        share = (time.perf_counter() - started) * 1000 / max(len(boxes), 1)
        analyses = [self._analyze_one(rgb, box, sets, share, embed) for box, sets in zip(boxes, all_sets)]
        if expressions:
            self.classify_expressions(analyses)
        return analyses

    def classify_expressions(self, analyses: list[FaceAnalysis]) -> None:
        """Emotion probabilities, emotion and face prompt of many faces, in one batch of the classifier."""
        if self.expression_model is None or not analyses:
            return
        started = time.perf_counter()
        probabilities = self.expression_model.probabilities([a.aligned for a in analyses])
        share = (time.perf_counter() - started) * 1000 / len(analyses)
        for analysis, row in zip(analyses, probabilities):
            analysis.emotion_probabilities = row
            from dynamicid.faces.emotion import emotion_from_probabilities

            analysis.emotion = emotion_from_probabilities(row)
            analysis.face_prompt = face_prompt.from_measurements(analysis.emotion, analysis.pose).text()
            analysis.timings_ms["prompt"] = analysis.timings_ms.get("prompt", 0.0) + share

    def _analyze_one(self, rgb: np.ndarray, box: FaceBox, sets: dict, landmark_ms: float, embed: bool) -> FaceAnalysis:
        timings: dict[str, float] = {"landmarks": landmark_ms}
        clock = _Clock(timings)
        convention = self.landmark_model.convention
        points = sets[convention]
        face68 = sets["ibug68"]  # alignment, pose and expression read the 68-point layout
        size = self.config.aligned_size
        matrix = alignment.alignment_matrix(face68, "ibug68", size)
        aligned = alignment.warp_face(rgb, matrix, size)
        aligned_points = alignment.apply_affine(matrix, points)
        sharp = alignment.sharpness(aligned)
        clock.lap("align")
        head = pose.estimate_pose(face68, "ibug68")
        cues = expression.expression_cues(alignment.apply_affine(matrix, face68), "ibug68")
        emotion = expression.emotion_from_cues(cues)
        prompt = face_prompt.from_measurements(emotion, head).text()
        clock.lap("prompt")
        analysis = FaceAnalysis(
            box=box,
            landmarks=points,
            landmark_convention=convention,
            affine=matrix,
            aligned=aligned,
            aligned_landmarks=aligned_points,
            pose=head,
            expression=cues,
            emotion=emotion,
            face_prompt=prompt,
            sharpness=sharp,
            landmarks68=face68,
            timings_ms=timings,
        )
        if embed and self.embedder is not None:
            analysis.embedding = self.embed(rgb, analysis)
            clock.lap("embed")
        return analysis

    def embed_input(self, rgb: np.ndarray, analysis: FaceAnalysis) -> np.ndarray:
        """The embedder's small input for an analysed face (its landmarks and its box's detector keypoints),
        which can wait for a batch without the photo."""
        box = None if self.config.five_points == "landmarks" else analysis.box
        return self.embedder.prepare(rgb, analysis.landmarks68, "ibug68", box)

    def embed(self, rgb: np.ndarray, analysis: FaceAnalysis) -> np.ndarray:
        """The identity embedding of one analysed face."""
        return self.embedder.embed_prepared([self.embed_input(rgb, analysis)])[0]

    def analyze(self, rgb: np.ndarray, max_faces: int | None = None, embed: bool = True) -> list[FaceAnalysis]:
        boxes = self.detect(rgb)
        if max_faces is not None:
            boxes = boxes[:max_faces]
        return self.analyze_faces(rgb, boxes, embed=embed)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

"""Plain data passed between face-analysis steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the image it was found in."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    # Five points from detectors that give them (eye centres, nose tip, mouth corners), else None.
    keypoints: tuple[tuple[float, float], ...] | None = None

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> FaceBox:
        points = tuple((x * factor, y * factor) for x, y in self.keypoints) if self.keypoints else None
        return FaceBox(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score, points)

    def as_list(self) -> list[float]:
        return [float(self.x0), float(self.y0), float(self.x1), float(self.y1)]


@dataclass(frozen=True)
class HeadPose:
    """Head rotation in degrees. pitch > 0: facing up; yaw > 0: turned towards the image's right;
    roll > 0: clockwise."""

    pitch: float
    yaw: float
    roll: float


@dataclass(frozen=True)
class ExpressionCues:
    """Measured from landmarks; each in [0, 1] where 1 is strongest."""

    smile: float
    mouth_open: float
    eyes_closed: float
    brows_raised: float


@dataclass
class FaceAnalysis:
    """Everything measured about one face. Coordinates are in the analysed (decoded) image."""

    box: FaceBox
    landmarks: np.ndarray  # (K, 2) float32, the landmark backend's primary layout
    landmark_convention: str  # e.g. "ibug68", "insightface106"
    affine: np.ndarray  # (2, 3) float64: image -> aligned crop
    aligned: np.ndarray  # (S, S, 3) uint8 RGB
    aligned_landmarks: np.ndarray  # (K, 2) in aligned-crop pixels
    pose: HeadPose
    expression: ExpressionCues
    emotion: str
    face_prompt: str
    sharpness: float
    landmarks68: np.ndarray | None = None  # the ibug68 layout (= landmarks for 68-point backends)
    embedding: np.ndarray | None = None  # (D,) float32
    emotion_probabilities: np.ndarray | None = None  # (7,) in faces.emotion.EMOTION_ORDER, from the classifier
    timings_ms: dict[str, float] = field(default_factory=dict)

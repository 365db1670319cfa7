"""Expression cues measured from 68 landmarks, and the emotion word they support.

Only what geometry shows is claimed: a smile, an open mouth, closed eyes, raised brows. Emotions that
landmarks cannot tell apart (sad, anger, disgust, fear) are never produced by this measurement.
"""

from __future__ import annotations

import numpy as np

from dynamicid.faces.types import ExpressionCues


def _ramp(value: float, start: float, end: float) -> float:
    return float(np.clip((value - start) / (end - start), 0.0, 1.0))


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def expression_cues(aligned_landmarks: np.ndarray, convention: str) -> ExpressionCues:
    """Cues from landmarks in the aligned crop (roll removed, scale fixed)."""
    if convention != "ibug68":
        raise ValueError(f"expression cues need ibug68 landmarks, got {convention!r}")
    p = np.asarray(aligned_landmarks, dtype=np.float64)
    left_eye, right_eye = p[36:42].mean(0), p[42:48].mean(0)
    eye_distance = _dist(left_eye, right_eye) or 1.0

    def eye_aspect(eye: np.ndarray) -> float:
        return (_dist(eye[1], eye[5]) + _dist(eye[2], eye[4])) / (2 * _dist(eye[0], eye[3]) + 1e-9)

    eye_ratio = 0.5 * (eye_aspect(p[36:42]) + eye_aspect(p[42:48]))
    mouth_width = _dist(p[48], p[54])
    inner_gap = np.mean([_dist(p[61], p[67]), _dist(p[62], p[66]), _dist(p[63], p[65])])
    mouth_ratio = inner_gap / (mouth_width + 1e-9)
    width_ratio = mouth_width / eye_distance
    lip_centre_y = 0.5 * (p[51, 1] + p[57, 1])
    corner_lift = (lip_centre_y - 0.5 * (p[48, 1] + p[54, 1])) / (mouth_width + 1e-9)
    brow_height = (0.5 * (left_eye[1] + right_eye[1]) - p[17:27, 1].mean()) / eye_distance

    smile = max(_ramp(width_ratio, 0.82, 1.02), _ramp(corner_lift, 0.02, 0.12))
    return ExpressionCues(
        smile=smile,
        mouth_open=_ramp(mouth_ratio, 0.08, 0.35),
        eyes_closed=_ramp(-eye_ratio, -0.22, -0.12),
        brows_raised=_ramp(brow_height, 0.42, 0.55),
    )


def emotion_from_cues(cues: ExpressionCues) -> str:
    if cues.smile >= 0.5:
        return "happy"
    if cues.mouth_open >= 0.5 and cues.brows_raised >= 0.5:
        return "surprise"
    return "neutral"

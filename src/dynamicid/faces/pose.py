"""Head pose from 2-D landmarks: a PnP fit of the rigid points of a mean 3-D face.

Frame: x to the image's right, y down, z away from the camera; the generic face looks along -z.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dynamicid.faces.types import HeadPose

# The rigid part of a mean 3-D face, iBUG-68 indices: nose bridge and tip, the nostrils' base and the eye
# corners, which expressions hardly move (a smile lifts the mouth corners and an open mouth drops the chin,
# and a fit that used them read those as the head pitching). Coordinates are those of the 68-point mean
# shape that InsightFace's Python package ships (data/objects/meanshape_68.pkl, MIT licence), a 3-D
# morphable model's mean face, moved so the nose tip is the origin, z turned to point away from the
# camera, scaled by 100 (the eyes' outer corners 76 units apart) and made symmetric about the midline, so a
# mirrored face reads the opposite yaw. `tools/pose_mean_face.py` extracts them.
MEAN_FACE_IBUG68 = {
    27: (0.0, -18.0, 13.7),  # nose root
    28: (0.0, -11.3, 8.8),
    29: (0.0, -5.7, 4.6),
    30: (0.0, 0.0, 0.0),  # nose tip
    31: (-13.9, 17.0, 17.9),  # nostrils' base, subject's right to left
    33: (0.0, 18.2, 8.4),
    35: (13.9, 17.0, 17.9),
    36: (-38.2, -17.1, 33.7),  # eye corners: right outer, right inner, left inner, left outer
    39: (-14.7, -17.0, 28.2),
    42: (14.7, -17.0, 28.2),
    45: (38.2, -17.1, 33.7),
}
# The mean face's own frame is pitched against a head that faces the camera: on the 16 portraits of
# ../shared/faces/identities and their mirror images (people looking into the camera) the median pitch it
# gives is -13.1 degrees. The model is turned by that angle, so that pitch 0 is the median portrait
# (benchmarks/RESULTS.md, "Head pose").
PITCH_OF_MEAN_FACE = -13.1
MODEL_VERSION = "mean-face-rigid-1"  # part of prep's configuration hash: a new model recomputes face prompts


def _turned(table: dict, pitch_degrees: float) -> dict:
    """The model's points rotated about the x axis so that a face measured at `pitch_degrees` reads 0."""
    angle = -math.radians(pitch_degrees)  # rotation_to_pose of this turn reads pitch_degrees
    rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    return {key: tuple(rotation @ np.asarray(point, dtype=np.float64)) for key, point in table.items()}


POSE_POINTS = {"ibug68": _turned(MEAN_FACE_IBUG68, PITCH_OF_MEAN_FACE)}


def generic_face(convention: str) -> tuple[list[int], np.ndarray]:
    try:
        table = POSE_POINTS[convention]
    except KeyError:
        raise ValueError(f"no 3-D face model for landmark convention {convention!r}") from None
    indices = list(table)
    return indices, np.array([table[i] for i in indices], dtype=np.float64)


def rotation_to_pose(rotation: np.ndarray) -> HeadPose:
    forward = rotation @ np.array([0.0, 0.0, -1.0])  # where the face looks, in camera coordinates
    right = rotation @ np.array([1.0, 0.0, 0.0])
    yaw = math.degrees(math.atan2(forward[0], -forward[2]))
    pitch = math.degrees(math.atan2(-forward[1], math.hypot(forward[0], forward[2])))
    roll = math.degrees(math.atan2(right[1], right[0]))
    return HeadPose(pitch=pitch, yaw=yaw, roll=roll)


def estimate_pose(landmarks: np.ndarray, convention: str) -> HeadPose:
    """Pitch (up > 0), yaw (towards image right > 0) and roll (clockwise > 0), in degrees."""
    indices, model = generic_face(convention)
    image_points = np.asarray(landmarks, dtype=np.float64)[indices]
    centre = image_points.mean(0)
    spread = float(np.ptp(image_points, axis=0).max()) or 1.0
    focal = 6.0 * spread  # a mild perspective; the face's own depth is small against its distance
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], dtype=np.float64)
    # Start in front of the camera, facing it, so the iterative fit cannot flip to the mirror solution.
    rvec0 = np.zeros((3, 1))
    tvec0 = np.array([[0.0], [0.0], [focal * float(np.ptp(model[:, :2], axis=0).max()) / spread]])
    ok, rvec, _ = cv2.solvePnP(
        model, image_points, camera, None, rvec0, tvec0, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return HeadPose(0.0, 0.0, 0.0)
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation_to_pose(rotation)

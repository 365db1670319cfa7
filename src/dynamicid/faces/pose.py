"""Head pose from 2-D landmarks: a PnP fit of a generic 3-D face.

Frame: x to the image's right, y down, z away from the camera; the generic face looks along -z.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dynamicid.faces.types import HeadPose

# A generic adult face in millimetres, nose tip at the origin. Keys are iBUG-68 indices.
GENERIC_FACE_IBUG68 = {
    30: (0.0, 0.0, 0.0),  # nose tip
    27: (0.0, -40.0, 22.0),  # nose root
    8: (0.0, 64.0, 13.0),  # chin
    36: (-44.0, -33.0, 27.0),  # eye outer corners
    45: (44.0, -33.0, 27.0),
    39: (-14.0, -32.0, 23.0),  # eye inner corners
    42: (14.0, -32.0, 23.0),
    48: (-29.0, 29.0, 24.0),  # mouth corners
    54: (29.0, 29.0, 24.0),
    31: (-13.0, 4.0, 15.0),  # nostril wings
    35: (13.0, 4.0, 15.0),
}
POSE_POINTS = {"ibug68": GENERIC_FACE_IBUG68}


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
    tvec0 = np.array([[0.0], [0.0], [focal * 120.0 / spread]])
    ok, rvec, _ = cv2.solvePnP(
        model, image_points, camera, None, rvec0, tvec0, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return HeadPose(0.0, 0.0, 0.0)
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation_to_pose(rotation)

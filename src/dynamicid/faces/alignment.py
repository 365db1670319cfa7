"""Similarity alignment of a face to a fixed five-point template."""

from __future__ import annotations

import cv2
import numpy as np

# Indices that give the five alignment points for each landmark convention:
# (left-eye points, right-eye points, nose tip, left mouth corner, right mouth corner); "left" is image-left.
FIVE_POINT_INDICES: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, int, int]] = {
    "ibug68": (tuple(range(36, 42)), tuple(range(42, 48)), 30, 48, 54),
    "five": ((0,), (1,), 2, 3, 4),
}

# Where the five points land in a unit square. A loose, head-and-hair crop (not ArcFace's tight 112 crop):
# the eyes sit at 25% of the width apart, so the whole head and some shoulders fit in a 512 training image.
ALIGN_TEMPLATE_UNIT = np.array(
    [
        [0.375, 0.430],  # left eye centre
        [0.625, 0.430],  # right eye centre
        [0.500, 0.565],  # nose tip
        [0.405, 0.690],  # left mouth corner
        [0.595, 0.690],  # right mouth corner
    ],
    dtype=np.float64,
)
TEMPLATE_VERSION = "loose5-v1"


def five_points(landmarks: np.ndarray, convention: str) -> np.ndarray:
    try:
        left, right, nose, mouth_left, mouth_right = FIVE_POINT_INDICES[convention]
    except KeyError:
        raise ValueError(f"no five-point mapping for landmark convention {convention!r}") from None
    pts = np.asarray(landmarks, dtype=np.float64)
    return np.stack([pts[list(left)].mean(0), pts[list(right)].mean(0), pts[nose], pts[mouth_left], pts[mouth_right]])


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `source` points onto `target` (Umeyama).

    Returns the 2x3 matrix M with target ~= M @ [x, y, 1].
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("degenerate landmarks: all alignment points coincide")
    cov = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # keep a rotation, never a reflection
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / src_var
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def alignment_matrix(landmarks: np.ndarray, convention: str, size: int) -> np.ndarray:
    return similarity_transform(five_points(landmarks, convention), ALIGN_TEMPLATE_UNIT * size)


def warp_face(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA is not defined for warps; when shrinking a lot, pre-blur would help, but LINEAR is
    # what alignment pipelines use and costs ~1.5 ms at 512.
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def sharpness(aligned_rgb: np.ndarray) -> float:
    """Variance of the Laplacian over the central face region at a fixed 128 px scale.

    Fixed scale and region make it comparable across source resolutions.
    """
    size = aligned_rgb.shape[0]
    lo, hi = int(size * 0.28), int(size * 0.78)
    face = cv2.cvtColor(aligned_rgb[lo:hi, lo:hi], cv2.COLOR_RGB2GRAY)
    face = cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(face, cv2.CV_64F).var())

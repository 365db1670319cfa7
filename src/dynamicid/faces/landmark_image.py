"""Landmark images: a 512 px drawing for people, and the method's 96x96 single-pixel map for the model.

`NAME.png` holds both, side by side, in one 8-bit grayscale image of LANDMARK_PNG_SIZE (width, height):

    x in [0, 512),   y in [0, 512): the drawing, aligned to NAME.jpg (lines and dots on black)
    x in [512, 608), y in [0, 96):  the 96x96 map: 255 at each landmark (aligned coords * 96/512), else 0
    everything else: 0

The landmark convention (e.g. ibug68) is stored in the PNG's text chunk and in the manifest.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from dynamicid.errors import InputError

DRAWING_SIZE = 512
MAP_SIZE = 96
LANDMARK_PNG_SIZE = (DRAWING_SIZE + MAP_SIZE, DRAWING_SIZE)

# Polylines of the iBUG 68-point layout: (first, last, closed)
IBUG68_CONTOURS = [
    (0, 16, False),  # jaw
    (17, 21, False),  # brows
    (22, 26, False),
    (27, 30, False),  # nose bridge
    (30, 35, True),  # nose base
    (36, 41, True),  # eyes
    (42, 47, True),
    (48, 59, True),  # outer lips
    (60, 67, True),  # inner lips
]


def render_map96(aligned_landmarks: np.ndarray, aligned_size: int = DRAWING_SIZE) -> np.ndarray:
    """The method's convention: single pixels set to 255 on a black 96x96 canvas; outside points skipped."""
    canvas = np.zeros((MAP_SIZE, MAP_SIZE), dtype=np.uint8)
    pts = np.asarray(aligned_landmarks, dtype=np.float64) * (MAP_SIZE / aligned_size)
    cols = np.floor(pts[:, 0]).astype(int)
    rows = np.floor(pts[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < MAP_SIZE) & (rows >= 0) & (rows < MAP_SIZE)
    canvas[rows[inside], cols[inside]] = 255
    return canvas


def render_drawing(aligned_landmarks: np.ndarray, convention: str, size: int = DRAWING_SIZE) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    pts = np.asarray(aligned_landmarks, dtype=np.float64) * (size / DRAWING_SIZE)
    fixed = np.round(pts * 16).astype(np.int32)  # 4 fractional bits for sub-pixel lines
    if convention == "ibug68" and len(pts) == 68:
        for first, last, closed in IBUG68_CONTOURS:
            cv2.polylines(canvas, [fixed[first : last + 1]], closed, 160, 2, cv2.LINE_AA, shift=4)
    for x, y in fixed:
        cv2.circle(canvas, (int(x), int(y)), 3 * 16, 255, -1, cv2.LINE_AA, shift=4)
    return canvas


def compose_landmark_png(
    aligned_landmarks: np.ndarray, convention: str, aligned_size: int = DRAWING_SIZE
) -> np.ndarray:
    width, height = LANDMARK_PNG_SIZE
    sheet = np.zeros((height, width), dtype=np.uint8)
    scaled = np.asarray(aligned_landmarks, dtype=np.float64) * (DRAWING_SIZE / aligned_size)
    sheet[:, :DRAWING_SIZE] = render_drawing(scaled, convention)
    sheet[:MAP_SIZE, DRAWING_SIZE:] = render_map96(scaled)
    return sheet


def encode_landmark_png(sheet: np.ndarray, convention: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("dynamicid-landmarks", f"convention={convention};drawing=0,0,512,512;map96=512,0,96,96")
    buffer = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def split_landmark_png(sheet: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(512x512 drawing, 96x96 map) from a loaded NAME.png array."""
    if sheet.shape[:2] != (LANDMARK_PNG_SIZE[1], LANDMARK_PNG_SIZE[0]):
        raise InputError(f"not a dynamicid landmark sheet: shape {sheet.shape}, expected {LANDMARK_PNG_SIZE[::-1]}")
    return sheet[:, :DRAWING_SIZE], sheet[:MAP_SIZE, DRAWING_SIZE:]

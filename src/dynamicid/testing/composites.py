"""Test images of several people made from real photos (issue 38 §3): each person's aligned face (the
analyser's 512² crop, as prep writes it) in a slot of a canvas, so the cases a multi-person generation can
fail in (swapped, one person twice, one missing, an extra stranger, a blend of two people) can be made
with faces whose owners are known. A blend is a 50/50 morph of two aligned faces: the alignment puts
their landmarks on the same template, so the mix is one face, not two overlaid."""

from __future__ import annotations

import numpy as np

from dynamicid.errors import InputError

TILE = 256  # a slot's side: the face in an aligned crop is about half of it, enough for dlib's HOG detector
GAP = 48


def aligned_face(analyzer, path: str) -> np.ndarray:
    """The aligned crop of the one face in a photo."""
    from dynamicid.imagefile import load_image

    faces = analyzer.analyze(load_image(path).rgb, max_faces=1)
    if not faces:
        raise InputError(f"{path}: no face was detected")
    return faces[0].aligned


def morph(first: np.ndarray, second: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Two aligned faces mixed pixel by pixel, `weight` of the first."""
    mixed = weight * first.astype(np.float32) + (1.0 - weight) * second.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def canvas(tiles: list[np.ndarray | None], tile: int = TILE, gap: int = GAP) -> tuple[np.ndarray, list[tuple]]:
    """The tiles in a row on a grey canvas, and each slot's normalised box (x0, y0, x1, y1). A None tile
    leaves its slot empty (a person who is missing)."""
    from PIL import Image

    width, height = gap + len(tiles) * (tile + gap), tile + 2 * gap
    image = np.full((height, width, 3), 128, np.uint8)
    boxes = []
    for slot, face in enumerate(tiles):
        x = gap + slot * (tile + gap)
        if face is not None:
            image[gap : gap + tile, x : x + tile] = np.asarray(
                Image.fromarray(face).resize((tile, tile), Image.Resampling.LANCZOS)
            )
        boxes.append((x / width, gap / height, (x + tile) / width, (gap + tile) / height))
    return image, boxes

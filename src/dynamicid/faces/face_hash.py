"""A perceptual hash of an aligned face: 64 bits that stay nearly the same when the photo is re-encoded,
resized or lightly cropped (the face is aligned to the same template whatever the framing), and differ in
about half their bits between two different photos. prep's curation finds near-duplicate photos with it.

The hash is the sign of each of the 8x8 lowest 2-D DCT frequencies of the 32x32 grey face against their
median (the DC term excluded from the median), written as 16 hex digits."""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE = 32
HASH_FREQUENCIES = 8


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `m @ x @ m.T` is the 2-D DCT of a `size` x `size` block."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(HASH_SIDE)


def face_hash(aligned_rgb: np.ndarray) -> str:
    """The 64-bit perceptual hash of an aligned face (H, W, 3 uint8), as 16 hex digits."""
    grey = Image.fromarray(np.asarray(aligned_rgb, dtype=np.uint8)).convert("L")
    small = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT @ small @ _DCT.T)[:HASH_FREQUENCIES, :HASH_FREQUENCIES].ravel()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def hash_distance(first: str, second: str) -> int:
    """How many of the 64 bits differ."""
    return (int(first, 16) ^ int(second, 16)).bit_count()


def hash_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """`hash_distance` over two arrays of hashes as unsigned 64-bit integers (`hashes_as_integers`)."""
    differing = np.bitwise_xor(first.astype(np.uint64), second.astype(np.uint64))
    return np.bitwise_count(differing).astype(np.int64)  # a byte per pair (unpacking bits took 64)


def hashes_as_integers(hashes) -> np.ndarray:
    """Hex hashes as unsigned 64-bit integers (a missing hash becomes 0)."""
    return np.array([int(h, 16) if h else 0 for h in hashes], dtype=np.uint64)

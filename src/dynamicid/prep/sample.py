"""A sample input the project makes itself: one real face (the astronaut photo that ships inside
scikit-image) in several encodings, photos without faces, and broken files made on the spot. The
encodings are one photo, so prep keeps the first (cmyk.jpg, by path) and rejects the others as near
copies (`duplicate`); the mirror image is another picture of the same face, and is kept.

`make_sample` returns what `prep` should record for each file, so the demo and the tests agree.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageFilter

from dynamicid.errors import SetupError


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims a huge image (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.pop("quality", 92), **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored turned a quarter to the left, with EXIF orientation 6 saying how to show them upright."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


def sixteen_bit_png(upright: Image.Image) -> bytes:
    gray = np.asarray(upright.convert("L"), dtype=np.uint16) * 257
    return png_bytes(Image.fromarray(gray))


def rgba_png(upright: Image.Image) -> bytes:
    rgba = upright.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[:, : rgba.width // 10] = 0  # a transparent strip, composited onto white
    rgba.putalpha(Image.fromarray(alpha))
    return png_bytes(rgba)


def broken_files(face: Image.Image) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the reason `prep` must record)."""
    whole = jpeg_bytes(face)
    webp = io.BytesIO()
    face.save(webp, format="WEBP", quality=80)
    return {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (whole[: len(whole) * 6 // 10], "truncated"),
        "truncated.webp": (webp.getvalue()[: webp.tell() // 2], "truncated"),
        "strip_4000x64.png": (png_bytes(Image.new("RGB", (4000, 64), (90, 120, 150))), "extreme_aspect_ratio"),
        "notes.jpg": (b"this is a text file with an image extension\n" * 3, "not_an_image"),
        "one_pixel.png": (png_bytes(Image.new("RGB", (1, 1), (128, 128, 128))), "too_small"),
        "bomb_30000x30000.png": (bomb_png(), "decompression_bomb"),
    }


def astronaut() -> Image.Image:
    try:
        from skimage import data
    except ImportError as err:
        raise SetupError(
            "make-sample needs scikit-image for its bundled photos: pip install 'dynamicid[sample]'"
        ) from err
    return Image.fromarray(data.astronaut())


def make_sample(folder: str) -> dict[str, tuple[str, str | None]]:
    """Write the sample under `folder`. Returns relative path -> (expected status, expected reason)."""
    from skimage import data

    face = astronaut()
    files: dict[str, tuple[bytes, str, str | None]] = {
        "astronaut/original.png": (png_bytes(face), "rejected", "duplicate"),
        "astronaut/mirrored.jpg": (jpeg_bytes(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), "ok", None),
        "astronaut/exif_rotated.jpg": (exif_rotated_jpeg(face), "rejected", "duplicate"),
        "astronaut/cmyk.jpg": (jpeg_bytes(face.convert("CMYK")), "ok", None),
        "astronaut/gray16.png": (sixteen_bit_png(face), "rejected", "duplicate"),
        "astronaut/rgba.png": (rgba_png(face), "rejected", "duplicate"),
        "astronaut/blurred.jpg": (jpeg_bytes(face.filter(ImageFilter.GaussianBlur(3))), "rejected", "too_blurry"),
        "scenes/coffee.png": (png_bytes(Image.fromarray(data.coffee())), "rejected", "no_face"),
        "scenes/cat.png": (png_bytes(Image.fromarray(data.chelsea())), "rejected", "no_face"),
        "scenes/rocket.jpg": (jpeg_bytes(Image.fromarray(data.rocket())), "rejected", "no_face"),
    }
    for name, (payload, reason) in broken_files(face).items():
        files[f"broken/{name}"] = (payload, "rejected", reason)
    expected = {}
    for relative, (payload, status, reason) in files.items():
        path = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(payload)
        expected[relative] = (status, reason)
    return expected

"""Decoding and validating one image from its bytes, shared by prep, generation and eval.
Every rejection carries a reason code.

Reason codes (also in the README):
  empty_file, too_large_file, not_an_image, unsupported_format, truncated, corrupt, too_small,
  extreme_aspect_ratio, decompression_bomb
(face-level reasons such as no_face come from the face stage.)
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

from dynamicid.options import check_limits, option

try:  # libjpeg-turbo without Pillow's copy; prep decodes faster with it, and the same pixels either way
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; Pillow decodes everything without it
    _simplejpeg = None

ImageFile.LOAD_TRUNCATED_IMAGES = False  # Pillow's default, stated: a cut file is an error, never half an image


@dataclass(frozen=True)
class ImageRules:
    """What a photo must be before any pixel is decoded (checked from its header), and how it is decoded.
    Every image the toolkit reads goes through `open_image` or `decode_image` with these rules; Pillow's own
    decompression-bomb guard stays on as well."""

    min_side: int = option(64, "reject images smaller than this on either side (px)", limits=(1, 65535))
    max_aspect_ratio: float = option(
        20.0, "reject images whose long side is more than this many times the short one", limits=(1, 65535)
    )
    max_pixels: int = option(
        180_000_000,
        "reject images whose header claims more pixels (decompression bombs; "
        "Pillow's own guard also refuses more than 178,956,970)",
        limits=(1, 2**32),
    )
    max_bytes: int = option(200 * 1024 * 1024, "reject files larger than this many bytes", limits=(1, 2**40))
    decode_side: int = option(
        1280, "large JPEGs are decoded at a reduced scale, never below this long side (px)", limits=(64, 65535)
    )

    def __post_init__(self) -> None:
        check_limits(self)


SUPPORTED_FORMATS = {
    "JPEG": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
    "MPO": "jpeg",
    "GIF": "gif",  # a still one: web scrapes are full of them; an animated one is refused (`animated`)
}


class Rejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, upright
    format: str
    source_mode: str
    width: int  # full-resolution, upright size
    height: int
    decode_scale: float  # decoded px per full-resolution px (< 1 after reduced-size JPEG decode)
    exif_rotated: bool
    grayscale: bool


def sniff_format(data: bytes) -> str | None:
    """The format from the first bytes, whatever the file's extension says."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        gray = ((values - low) / (high - low + 1e-12) * 255.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent areas become white
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def _webp_cut_short(head: bytes, size: int) -> bool:
    """A WebP's RIFF header states its length; Pillow says only "could not create decoder" when it is cut."""
    return len(head) >= 12 and int.from_bytes(head[4:8], "little") + 8 > size


def _open_checked(stream: BinaryIO, size: int, rules: ImageRules) -> Image.Image:
    """The image in `stream` (`size` bytes) opened, its header checked against the rules; Pillow reads only
    the header, and no pixel is decoded yet."""
    if size == 0:
        raise Rejected("empty_file", "the file has zero bytes")
    if size > rules.max_bytes:
        raise Rejected("too_large_file", f"{size} bytes is over the limit of {rules.max_bytes}")
    head = stream.read(16)
    stream.seek(0)
    kind = sniff_format(head)
    if kind is None:
        raise Rejected("not_an_image", "the content is not a JPEG, PNG, WebP, BMP, TIFF or GIF image")
    if kind == "webp" and _webp_cut_short(head, size):
        raise Rejected(
            "truncated",
            f"the WebP header declares {int.from_bytes(head[4:8], 'little') + 8} bytes, the file has {size}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(stream)
    except Image.DecompressionBombError as err:
        raise Rejected("decompression_bomb", f"{err}") from None
    except Exception as err:  # the header itself is unreadable
        raise Rejected("corrupt", f"the {kind} header cannot be read: {err}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise Rejected("unsupported_format", f"format {image.format} is not accepted")
    if image.format == "GIF" and _frames(image) > 1:
        raise Rejected(
            "animated",
            f"an animated GIF of {_frames(image)} frames: which one is the person is unknown; use a still photo",
        )
    width, height = image.size
    if width * height > rules.max_pixels:
        raise Rejected(
            "decompression_bomb",
            f"header claims {width}x{height} = {width * height / 1e6:.0f} MP, over {rules.max_pixels / 1e6:.0f} MP",
        )
    if min(width, height) < rules.min_side:
        raise Rejected("too_small", f"{width}x{height} is below the minimum side of {rules.min_side} px")
    if max(width, height) > rules.max_aspect_ratio * min(width, height):
        raise Rejected(
            "extreme_aspect_ratio",
            f"{width}x{height} is more than {rules.max_aspect_ratio:g} times "
            "longer than wide; no face can be found at the detector's scale",
        )
    return image


def _frames(image: Image.Image) -> int:
    try:
        return int(getattr(image, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise Rejected("corrupt", f"the GIF's frames cannot be read: {err}") from None


def _draft(image: Image.Image, rules: ImageRules) -> float:
    """Asks for a reduced-size decode of a large JPEG (long side never below decode_side); returns the decoded
    px per source px it will give. Nothing is decoded here."""
    width, height = image.size
    if image.format not in ("JPEG", "MPO") or max(width, height) < 2 * rules.decode_side:
        return 1.0
    # DCT-domain downscale by 1/2, 1/4 or 1/8, several times faster than a full decode. Pillow keeps both sides
    # above the box it is given, so the box has the photo's own aspect ratio.
    shrink = rules.decode_side / max(width, height)
    drafted = image.draft(image.mode, (max(1, int(width * shrink)), max(1, int(height * shrink))))
    return drafted[1][2] / width if drafted else 1.0  # (mode, (0, 0, width / s, height / s)) for a reduction by s


def _turbo_rgb(image: Image.Image, data: bytes, scale: float) -> np.ndarray | None:
    """A colour JPEG's pixels straight from libjpeg-turbo (simplejpeg), at the scale `_draft` chose: the same
    pixels as Pillow's decode, without the copy out of Pillow's own layout (2-3 ms less on a 3000 px photo on
    one core; benchmarks/RESULTS.md).
    None, for Pillow to decode, where simplejpeg is missing, for other modes, and for any file it finds fault
    with: Pillow's decode then gives the rejection its reason and message."""
    if _simplejpeg is None or image.format != "JPEG" or image.mode != "RGB":
        return None
    factor = round(1 / scale)
    width, height = image.size  # after the draft: the reduced size
    try:
        pixels = _simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=height, min_width=width, min_factor=factor, strict=True
        )
    except ValueError:
        return None
    return pixels if pixels.shape == (height, width, 3) else None


def _decode_reduced(image: Image.Image, rules: ImageRules, data: bytes) -> tuple[np.ndarray, float]:
    """Decodes the pixels, large images at a reduced scale (long side never below decode_side), so that
    memory per image stays near the decoder's own buffer. Returns (RGB pixels, decoded px per source px)."""
    width, height = image.size
    scale = _draft(image, rules)
    pixels = _turbo_rgb(image, data, scale)
    if pixels is not None:
        return pixels, scale
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        text = str(err)
        reason = "truncated" if "truncat" in text.lower() or "end of file" in text.lower() else "corrupt"
        raise Rejected(reason, f"decoding failed: {text}") from None
    if scale == 1.0 and max(width, height) >= 2 * rules.decode_side:
        # Other formats decode only at full size: shrink at once by a whole factor, before any conversion
        # copies the full-size pixels.
        factor = max(width, height) // rules.decode_side
        try:
            reduced = image.reduce(factor)
        except ValueError:  # modes reduce() lacks (16-bit, palette, 1-bit): resize does them all
            reduced = image.resize((-(-width // factor), -(-height // factor)), Image.Resampling.BOX)
        return _to_rgb(reduced), 1.0 / factor
    return _to_rgb(image), scale


# EXIF orientation -> the array view that makes the image upright (EXIF defines 1..8; 1 is upright); each is
# Pillow's transposition of the same number (FLIP_LEFT_RIGHT, ROTATE_180, ...), done on the array.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def decode_image(data: bytes, rules: ImageRules) -> DecodedImage:
    """Checks and decodes one image; raises Rejected with a reason code for anything unusable."""
    image = _open_checked(io.BytesIO(data), len(data), rules)
    image_format, source_mode = SUPPORTED_FORMATS[image.format], image.mode
    width, height = image.size
    decoded, scale = _decode_reduced(image, rules, data)
    # After the decode: a PNG's EXIF may follow its pixels, and reading it would decode them unguarded.
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    upright = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None  # anything else: upright
    if orientation in (5, 6, 7, 8) and upright is not None:
        width, height = height, width
    rgb = np.ascontiguousarray(upright(decoded) if upright is not None else decoded)
    grayscale = source_mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F") or bool(
        np.array_equal(rgb[::7, ::7, 0], rgb[::7, ::7, 1]) and np.array_equal(rgb[::7, ::7, 1], rgb[::7, ::7, 2])
    )
    return DecodedImage(
        rgb=rgb,
        format=image_format,
        source_mode=source_mode,
        width=width,
        height=height,
        decode_scale=scale,
        exif_rotated=upright is not None,
        grayscale=grayscale,
    )


@contextlib.contextmanager
def _opened(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """The local file and its size; a file that cannot be opened is Rejected as read_error."""
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise Rejected("read_error", f"{path}: {err.strerror or err}") from None
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size


def load_image(path: str, rules: ImageRules | None = None) -> DecodedImage:
    """Read and decode a local file with the same rules as prep; raises Rejected with a reason."""
    rules = rules or ImageRules()
    with _opened(str(path)) as (handle, _):
        data = handle.read(rules.max_bytes + 1)  # never more than the limit into memory
    return decode_image(data, rules)


def check_header(path: str, rules: ImageRules | None = None) -> tuple[int, int]:
    """A local image's size, after the header checks of `decode_image`; only the header is read, no pixel is
    decoded. Raises Rejected."""
    with _opened(str(path)) as (handle, size):
        return _open_checked(handle, size, rules or ImageRules()).size


def open_image(path: str, mode: str = "RGB", rules: ImageRules | None = None) -> Image.Image:
    """A local image in `mode`, at full size, after the same header checks as `decode_image`: the reader for
    files the toolkit reads whole (training images, landmark maps, thumbnails). Raises Rejected."""
    with _opened(str(path)) as (handle, size):
        image = _open_checked(handle, size, rules or ImageRules())
        try:
            return image.convert(mode)
        except (OSError, SyntaxError, ValueError) as err:
            raise Rejected("corrupt", f"{path}: decoding failed: {err}") from None

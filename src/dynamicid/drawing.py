"""Small drawing helpers shared by the contact sheet, the eval report and the loss curve."""

from __future__ import annotations

from PIL import ImageFont


def font(size: int):
    """Pillow's built-in font at `size` px (a fixed small bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()

"""Small drawing helpers shared by the contact sheet, the eval report, the loss curve and the dataset card."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    """Pillow's built-in font at `size` px (a fixed small bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def bar_chart(title: str, labels: list[str], values: list[int], width: int = 560, bar: int = 22) -> Image.Image:
    """A horizontal bar chart with each bar's label and count; an empty chart says "nothing to show"."""
    rows = max(len(labels), 1)
    image = Image.new("RGB", (width, 44 + rows * (bar + 6)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill=(20, 20, 20), font=font(15))
    if not labels:
        draw.text((10, 44), "nothing to show", fill=(120, 120, 120), font=font(13))
        return image
    label_width, top = 150, 40
    longest = max(max(values), 1)
    for row, (label, value) in enumerate(zip(labels, values)):
        y = top + row * (bar + 6)
        draw.text((10, y + 4), str(label)[:22], fill=(40, 40, 40), font=font(13))
        length = int((width - label_width - 70) * value / longest)
        draw.rectangle((label_width, y, label_width + max(length, 1), y + bar), fill=(66, 120, 200))
        draw.text((label_width + length + 6, y + 4), f"{value:,}", fill=(40, 40, 40), font=font(13))
    return image

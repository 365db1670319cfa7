"""Small drawing helpers shared by the contact sheet, the eval report, the loss curve and the dataset card."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

# Characters our texts use that Pillow's built-in font lacks (it draws a box for each): their plain forms.
PLAIN_FORMS = {"–": "-", "—": "-", "…": "...", "×": "x", "→": "->", "²": "2", "≥": ">=", "≤": "<=", "·": "-"}


class _GlyphSafeFont(ImageFont.FreeTypeFont):
    """Pillow's built-in font, drawing a character it lacks as its plain form (PLAIN_FORMS) or "?", never as
    the missing-glyph box."""

    def _raw(self, char: str) -> tuple:
        mask, _ = ImageFont.FreeTypeFont.getmask2(self, char, "L")  # the base class's: no substitution
        return mask.size, bytes(mask)

    def _plain(self, text: str) -> str:
        if text.isascii():
            return text
        if not hasattr(self, "_missing"):
            self._missing = self._raw("\ue000")  # a private-use character: no font has its glyph
        chars = (PLAIN_FORMS.get(c, c) for c in text)
        return "".join(c if c.isascii() or self._raw(c) != self._missing else "?" for c in "".join(chars))

    def getmask2(self, text, *args, **kwargs):
        return super().getmask2(self._plain(text), *args, **kwargs)

    def getbbox(self, text, *args, **kwargs):
        return super().getbbox(self._plain(text), *args, **kwargs)

    def getlength(self, text, *args, **kwargs):
        return super().getlength(self._plain(text), *args, **kwargs)


def font(size: int):
    """Pillow's built-in font at `size` px (a fixed small bitmap font where Pillow lacks FreeType); characters
    it has no glyph for are drawn in a plain form, never as a box."""
    try:
        loaded = ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()
    if isinstance(loaded, ImageFont.FreeTypeFont):
        loaded.__class__ = _GlyphSafeFont
    return loaded


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

"""An optional safety filter for `serve` (issue 37 §5): NudeNet's detector (its ONNX model ships inside the
`nudenet` wheel) looks at every generated image before it is written, and when one shows exposed genitals,
breasts, buttocks or anus the request's images are withheld: never written, and the request answered with a
refusal that says why.

Licence: nudenet's package metadata says MIT, but the licence file inside its wheel is the AGPL-3.0. So it
is an optional extra (`pip install dynamicid[safety]`) that the operator chooses, never a dependency.

`--safety-filter auto` (the default) filters when nudenet is installed and says at start when it is not;
`on` refuses to start without it; `off` never filters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dynamicid.errors import SetupError
from dynamicid.options import option

logger = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
INSTALL_HINT = "pip install 'dynamicid[safety]' (nudenet; its wheel's licence file is the AGPL-3.0)"
# NudeNet's classes that withhold an image; covered parts, faces and feet do not.
WITHHELD = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
MIN_SCORE = 0.45  # a detection's score at or above which it counts (NudeNet reports from 0.2)


def safety_option():
    """`serve`'s choice, written once."""
    return option(
        "auto",
        "withhold generated images that NudeNet finds nudity in: auto (when nudenet is installed; the default), "
        f"on (refuse to start without it), off. Install: {INSTALL_HINT}",
        choices=MODES,
    )


@dataclass(frozen=True)
class Verdict:
    withheld: bool
    found: tuple[str, ...]  # the withholding classes found, with their scores, e.g. "BUTTOCKS_EXPOSED 0.81"


class SafetyFilter:
    """Judges images before they are written; `detector` is anything with NudeNet's
    `detect(bgr_array) -> [{"class", "score", "box"}, ...]`."""

    def __init__(self, detector: Any = None):
        if detector is None:
            try:
                from nudenet import NudeDetector
            except ImportError:
                raise SetupError(f"the safety filter needs nudenet: {INSTALL_HINT}") from None
            detector = NudeDetector()
        self.detector = detector

    def judge(self, image: Any) -> Verdict:
        """A PIL image's verdict."""
        import numpy as np

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])  # NudeNet reads arrays as OpenCV does
        found = tuple(
            f"{item['class']} {float(item['score']):.2f}"
            for item in self.detector.detect(bgr)
            if item.get("class") in WITHHELD and float(item.get("score", 0.0)) >= MIN_SCORE
        )
        return Verdict(bool(found), found)


def build_safety_filter(mode: str) -> SafetyFilter | None:
    """The filter `mode` asks for: None for "off", and for "auto" when nudenet is not installed."""
    if mode == "off":
        return None
    try:
        return SafetyFilter()
    except SetupError:
        if mode == "on":
            raise
        logger.warning("the safety filter is off: nudenet is not installed (%s)", INSTALL_HINT)
        return None

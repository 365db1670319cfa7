"""The default captioner: it states only what was measured, never invented scene content."""

from __future__ import annotations

import numpy as np


class MeasuredCaptioner:
    name = "measured"
    model_id = "measured-v1"

    def __init__(self, model_path: str | None = None):
        pass

    def caption(self, aligned_rgb: np.ndarray, facts: dict) -> str:
        words = ["a close-up photo of a person's face"]
        if facts.get("grayscale"):
            words[0] = "a black-and-white close-up photo of a person's face"
        details = []
        if facts.get("eyes_closed", 0.0) >= 0.5:
            details.append("eyes closed")
        if facts.get("mouth_open", 0.0) >= 0.5:
            details.append("mouth open")
        text = ", ".join(words + [facts["face_prompt"]] + details)
        return text

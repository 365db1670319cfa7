"""The face prompt of the method: "in a {emotion} expression, {pose}".

Pose words (thresholds from the method spec, 10 degrees):
  "facing up" if pitch > 10, "facing down" if pitch < -10;
  then "in front view" if |yaw| < 10, else "in side view, turned left|right".
The side direction is ours (the spec has none): "left" and "right" are the image's, as a viewer sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dynamicid.errors import InputError
from dynamicid.faces.types import HeadPose

EMOTIONS = ("happy", "surprise", "sad", "anger", "disgust", "fear", "neutral")
# The expression classifier's classes (FER2013's order), in the method's words: manifest columns emotion_<word>.
CLASSIFIER_EMOTIONS = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
ANGLE_THRESHOLD = 10.0


@dataclass(frozen=True)
class FacePrompt:
    emotion: str
    tilt: str | None  # "up", "down" or None
    view: str  # "front" or "side"
    side: str | None  # "left", "right" or None (front view, or a prompt without a side)

    def text(self) -> str:
        parts = []
        if self.tilt:
            parts.append(f"facing {self.tilt}")
        parts.append("in front view" if self.view == "front" else "in side view")
        if self.view == "side" and self.side:
            parts.append(f"turned {self.side}")
        return f"in a {self.emotion} expression, " + ", ".join(parts)


def from_measurements(emotion: str, pose: HeadPose, threshold: float = ANGLE_THRESHOLD) -> FacePrompt:
    if emotion not in EMOTIONS:
        raise InputError(f"unknown emotion {emotion!r}; one of {', '.join(EMOTIONS)}")
    tilt = "up" if pose.pitch > threshold else "down" if pose.pitch < -threshold else None
    if abs(pose.yaw) < threshold:
        return FacePrompt(emotion, tilt, "front", None)
    return FacePrompt(emotion, tilt, "side", "right" if pose.yaw > 0 else "left")


_PATTERN = re.compile(
    r"in an? (?P<emotion>\w+) expression"
    r"(?:, facing (?P<tilt>up|down))?"
    r"(?:, in (?P<view>front|side) view)?"
    r"(?:,? turned (?P<side>left|right))?"
)


def parse(text: str) -> FacePrompt:
    """Read a face prompt back; raises ValueError when it does not follow the template."""
    match = _PATTERN.search(text.strip().lower())
    if not match or match.group("emotion") not in EMOTIONS:
        raise InputError(f"not a face prompt: {text!r}; expected e.g. 'in a happy expression, in front view'")
    view = match.group("view") or ("side" if match.group("side") else "front")
    return FacePrompt(match.group("emotion"), match.group("tilt"), view, match.group("side"))

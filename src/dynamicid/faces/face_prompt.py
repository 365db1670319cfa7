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


# Everyday words for the method's emotions, read as them ("in an angry expression" is anger).
SYNONYMS = {
    "angry": "anger",
    "surprised": "surprise",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "sadness": "sad",
    "happiness": "happy",
    "smiling": "happy",
    "calm": "neutral",
}
_PATTERN = re.compile(
    r"in an? (?P<emotion>[a-z]+) expression"
    r"(?:,? facing (?P<tilt>up|down))?"
    r"(?:,? in (?P<view>front|side) view)?"
    r"(?:,? turned (?P<side>left|right))?"
)
ALLOWED = (
    "a face prompt is 'in a EMOTION expression', then optionally ', facing up|down', ', in front view' or "
    "', in side view' and ', turned left|right'; EMOTION is one of " + ", ".join(EMOTIONS)
)


def parse(text: str) -> FacePrompt:
    """Read a face prompt (the one rule of generate, eval, the page and the API): the template, in any case
    and spacing, "a" or "an", with everyday words for the emotions (`SYNONYMS`). Anything else is an
    InputError that says what is accepted."""
    cleaned = " ".join(str(text).lower().replace(" ,", ",").split()).rstrip(".")
    match = _PATTERN.fullmatch(cleaned)
    emotion = SYNONYMS.get(match.group("emotion"), match.group("emotion")) if match else None
    if match is None or emotion not in EMOTIONS:
        raise InputError(f"{text!r} is not a face prompt: {ALLOWED}, e.g. 'in a happy expression, in front view'")
    view = match.group("view") or ("side" if match.group("side") else "front")
    side = match.group("side") if view == "side" else None
    return FacePrompt(emotion, match.group("tilt"), view, side)


def normalise(text: str) -> str:
    """The face prompt in the method's exact words ("in an angry expression" -> "in a anger expression, in
    front view"), as the model was trained on them."""
    return parse(text).text()

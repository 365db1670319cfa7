"""Reading a person's inputs: the reference photo and the target landmark map, with errors that name the file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynamicid.faces import landmark_image
from dynamicid.generation.request import GenerationError
from dynamicid.imagefile import ImageRules, Rejected, load_image, open_image


@dataclass
class EncodedPerson:
    """One person's identity tokens, ready for generation; `DynamicIDPipeline.encode_persons` makes them and
    `__call__(person_embeds=...)` takes them back, so a face is analysed once for many images."""

    tokens: torch.Tensor  # (k, D), after any IMR edit
    source_tokens: torch.Tensor  # (k, D), straight from the face encoder
    source_face_prompt: str
    edited: bool
    face_box: list[float]
    embedding: np.ndarray | None = None  # the reference face's identity embedding: what outputs are checked against


def load_rgb(source: Any, what: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    try:
        return load_image(str(source)).rgb
    except Rejected as rejection:
        raise GenerationError(f"{what} {source}: {rejection.reason}: {rejection.message}") from None


def target_map(source: Any) -> np.ndarray:
    """A 96x96 landmark map from an array, a 96x96 image or prep's 608x512 NAME.png."""
    if isinstance(source, np.ndarray):
        array = source
    else:
        try:
            array = np.asarray(open_image(str(source), "L", ImageRules(min_side=1)))  # a map may be small
        except Rejected as rejection:
            raise GenerationError(f"target landmarks {source}: {rejection.reason}: {rejection.message}") from None
    if array.shape == (landmark_image.LANDMARK_PNG_SIZE[1], landmark_image.LANDMARK_PNG_SIZE[0]):
        array = landmark_image.split_landmark_png(array)[1]
    if array.shape != (landmark_image.MAP_SIZE, landmark_image.MAP_SIZE):
        raise GenerationError(
            f"target landmarks must be a 96x96 map or prep's 608x512 NAME.png, got shape {array.shape}"
        )
    return array

"""A generation request, checked without any model: the persons, the size, the steps. The command line
and the web app check a request here before the long model load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamicid.errors import InputError
from dynamicid.generation.layout import LayoutError, automatic_boxes, check_boxes


class GenerationError(InputError):
    """A problem with the request, found before any denoising."""


# Height x width x images of one call: 8 images of 1024x1024, or 2 of 2048x2048. Memory grows with it, so a
# larger request is refused before any model loads (raise it with max_output_pixels / --max-output-pixels).
MAX_OUTPUT_PIXELS = 8 * 1024 * 1024
# The pipeline's and the command's defaults, written once.
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_ID_SCALE = 50, 5.0, 1.0


def default_side(persons: int) -> int:
    """The image side when none is given, the one rule of the pipeline, the command line and the server:
    512 px for one person, 768 for two, 1024 for more (room for each face)."""
    return {1: 512, 2: 768}.get(persons, 1024)


def default_size(persons: int, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width): what was given, else `default_side`; a width alone or a height alone sets both."""
    side = default_side(persons)
    return height or width or side, width or height or side


@dataclass
class Person:
    reference: str | np.ndarray | None  # a photo path or an RGB uint8 array; None only with person_embeds
    face_prompt: str | None = None  # e.g. "in a happy expression, in side view, turned left"
    target_landmarks: str | np.ndarray | None = None  # a 96x96 map, or prep's NAME.png sheet
    box: tuple[float, float, float, float] | None = None  # [x0, y0, x1, y1] as fractions of the image
    name: str | None = None


def _check_face_prompts(persons: list[Person]) -> None:
    """Each face prompt follows the one rule (`face_prompt.parse`); the person is named as the user counts."""
    from dynamicid.faces.face_prompt import parse

    for index, person in enumerate(persons):
        if person.face_prompt is not None and not isinstance(person.face_prompt, str):
            raise GenerationError(
                f"{_who(person, index)}: face_prompt must be text, not {type(person.face_prompt).__name__}"
            )
        if person.face_prompt:
            try:
                parse(person.face_prompt)
            except InputError as err:
                raise GenerationError(f"{_who(person, index)}: {err}") from None


def _who(person: Person, index: int) -> str:
    """A person as the user knows them: their name, else their place counted from 1."""
    return f"person {index + 1}" + (f" ({person.name})" if person.name else "")


def _check_person_files(persons: list[Person]) -> None:
    """Each reference photo and landmark file exists and is an image, checked from its header only."""
    from dynamicid.imagefile import ImageRules, Rejected, check_header

    for index, person in enumerate(persons):
        for what, source in (("reference photo", person.reference), ("target landmarks", person.target_landmarks)):
            if source is None or isinstance(source, np.ndarray):
                continue
            try:
                check_header(str(source), ImageRules(min_side=1))
            except Rejected as rejection:
                raise GenerationError(
                    f"{_who(person, index)}: {what} {source}: {rejection.reason}: {rejection.message}"
                ) from None


def check_request(
    persons: list[Person],
    height: int,
    width: int,
    steps: int,
    guidance: float,
    images: int = 1,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
) -> Any:
    """Everything about a request that can be known without a model, so a bad request fails before the
    long model load. Returns the persons' boxes: theirs, checked, or automatic ones for several persons."""
    if not isinstance(images, int) or images < 1:
        raise GenerationError(f"num_images_per_prompt (images) must be at least 1, not {images}")
    if not persons:
        raise GenerationError("give at least one person (a reference photo)")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise GenerationError(f"{name} {value} must be a positive multiple of 8")
    if height * width * images > max_output_pixels:
        raise GenerationError(
            f"{images} image(s) of {width}x{height} is {height * width * images / 2**20:.1f} megapixels in one call, "
            "over "
            f"the limit of {max_output_pixels / 2**20:.1f} (max_output_pixels): ask for fewer or "
            "smaller images, or raise the limit if the device has the memory"
        )
    if not isinstance(steps, int) or steps < 1:
        raise GenerationError("num_inference_steps (steps) must be at least 1")
    if not guidance >= 0:  # also refuses NaN
        raise GenerationError("guidance_scale (guidance) must not be negative")
    try:
        boxes = check_boxes([p.box for p in persons if p.box is not None], len(persons))
    except LayoutError as err:
        raise GenerationError(str(err)) from None
    _check_face_prompts(persons)
    _check_person_files(persons)
    if boxes is None and len(persons) > 1:
        boxes = automatic_boxes(len(persons), width, height)
    return boxes

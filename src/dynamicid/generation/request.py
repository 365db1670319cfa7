"""A generation request, checked without any model: the persons, the size, the steps. The command line
and the web app check a request here before the long model load."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from dynamicid.errors import InputError
from dynamicid.generation.layout import LayoutError, automatic_boxes, check_boxes
from dynamicid.options import check_limits, option


class GenerationError(InputError):
    """A problem with the request, found before any denoising."""


# Height x width x images of one call: 8 images of 1024x1024, or 2 of 2048x2048. Memory grows with it, so a
# larger request is refused before any model loads (raise it with max_output_pixels / --max-output-pixels).
MAX_OUTPUT_PIXELS = 8 * 1024 * 1024
# The pipeline's and the command's defaults, written once.
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_ID_SCALE = 50, 5.0, 1.0
# Height x width x images x steps of one call: its time grows with it, so a server can bound what one
# request may cost before it runs (max_work / --max-work). The default allows MAX_OUTPUT_PIXELS at 50 steps.
MAX_WORK = MAX_OUTPUT_PIXELS * DEFAULT_STEPS


@dataclass(frozen=True)
class RequestLimits:
    """What one call may cost, refused before any model runs; `generate` and `serve` take both as options."""

    max_output_pixels: int = option(
        MAX_OUTPUT_PIXELS,
        "refuse a call whose height x width x images is larger (memory grows with it; raise it on a device with "
        "the memory)",
        limits=(64, 2**40),
    )
    max_work: int = option(
        MAX_WORK,
        "refuse a call whose height x width x images x steps is larger (its time grows with it; lower it on a "
        "shared server so that no one request holds the queue for long)",
        limits=(64, 2**50),
    )

    def __post_init__(self) -> None:
        check_limits(self)


@dataclass(frozen=True)
class Settings:
    """A generation's settings beside its prompt and persons, with the one set of defaults the command line,
    the server's page and its HTTP API share (the pipeline's own arguments default to the same values).
    Build one from outside values with `check_settings`."""

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    height: int | None = None  # None: `default_side` for the number of persons
    width: int | None = None
    seed: int = 0  # -1: a random seed, recorded in the sidecar
    id_scale: float = DEFAULT_ID_SCALE
    infer_scale: float | None = None  # None: 2 with boxes or several persons, else 0
    infer_end: int | None = None  # None: 12 with boxes or several persons, else 0
    negative_prompt: str | None = None
    gate_maps: bool = False

    def concrete_seed(self) -> int:
        return self.seed if self.seed >= 0 else int(np.random.default_rng().integers(0, 2**31 - 1))

    def changed(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what a client needs to send)."""
        defaults = asdict(Settings())
        return {k: v for k, v in asdict(self).items() if v != defaults[k]}


# Finite ranges for every number, checked where a value enters (the command line, --config, the API).
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "steps": (1, 1000),
    "guidance": (0.0, 100.0),
    "height": (8, 16384),
    "width": (8, 16384),
    "seed": (-1, 2**63 - 1),
    "id_scale": (0.0, 10.0),
    "infer_scale": (0.0, 100.0),
    "infer_end": (0, 1000),
}


def check_settings(given: Any, where: str = "settings") -> Settings:
    """`Settings` from outside values (a JSON object, a config): unknown keys are refused with the known ones
    and their defaults, types are checked, not coerced (true is no number, "5" is no number), and every
    number must be finite and in its range."""
    if not isinstance(given, dict):
        raise GenerationError(f"{where} must be an object of settings, not {type(given).__name__}")
    defaults = asdict(Settings())
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in defaults.items())
        raise GenerationError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; known (default): {known}")
    kinds = {f.name: f.type for f in fields(Settings)}
    for key, value in given.items():
        _check_setting(key, value, str(kinds[key]), where)
    return Settings(**given)


def _check_setting(key: str, value: Any, kind: str, where: str) -> None:
    if value is None:
        if "None" not in kind:
            raise GenerationError(f"{where}: {key} may not be null")
        return
    expected = kind.split(" |")[0]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[expected]
    if not ok:
        raise GenerationError(f"{where}: {key} must be {expected}, not {type(value).__name__} {value!r}")
    check_number(key, value, f"{where}: {key}")


def check_number(key: str, value: Any, named: str) -> None:
    """A setting's value is a finite number in its `SETTING_RANGES` range (None: the setting's default)."""
    if key not in SETTING_RANGES or value is None:
        return
    low, high = SETTING_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationError(f"{named} must be a number, not {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise GenerationError(f"{named} must be a finite number from {low:g} to {high:g}, not {value!r}")


def _check_work(work: int, images: int, width: int, height: int, steps: int, max_work: int) -> None:
    if work > max_work:
        raise GenerationError(
            f"{images} image(s) of {width}x{height} at {steps} steps is {work / 2**20:,.0f} megapixel-steps, over the "
            f"limit of {max_work / 2**20:,.0f} (max_work, --max-work): ask for fewer steps or images or a smaller "
            "size, or raise the limit"
        )


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
    place = f"person {index + 1}"
    return place + (f" ({person.name})" if person.name and person.name != place else "")


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
    limits: RequestLimits | None = None,
) -> Any:
    """Everything about a request that can be known without a model, so a bad request fails before the
    long model load. Returns the persons' boxes: theirs, checked, or automatic ones for several persons."""
    limits = limits or RequestLimits()
    max_output_pixels = limits.max_output_pixels
    if not isinstance(images, int) or images < 1:
        raise GenerationError(f"num_images_per_prompt (images) must be at least 1, not {images}")
    if not persons:
        raise GenerationError("give at least one person (a reference photo)")
    for name, value in (("height", height), ("width", width)):
        check_number(name, value, name)
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise GenerationError(f"{name} {value} must be a positive multiple of 8")
    if height * width * images > max_output_pixels:
        raise GenerationError(
            f"{images} image(s) of {width}x{height} is {height * width * images / 2**20:.1f} megapixels in one call, "
            "over "
            f"the limit of {max_output_pixels / 2**20:.1f} (max_output_pixels): ask for fewer or "
            "smaller images, or raise the limit if the device has the memory"
        )
    check_number("steps", steps, "num_inference_steps (steps)")
    check_number("guidance", guidance, "guidance_scale (guidance)")
    if not isinstance(steps, int):
        raise GenerationError(f"num_inference_steps (steps) must be a whole number, not {steps!r}")
    _check_work(height * width * images * steps, images, width, height, steps, limits.max_work)
    try:
        boxes = check_boxes([p.box for p in persons if p.box is not None], len(persons))
    except LayoutError as err:
        raise GenerationError(str(err)) from None
    _check_face_prompts(persons)
    _check_person_files(persons)
    if boxes is None and len(persons) > 1:
        boxes = automatic_boxes(len(persons), width, height)
    return boxes


def check_identities_option(default: bool) -> Any:
    """`generate`'s and `serve`'s identity check, one help text (serve turns it on by default)."""
    return option(
        default,
        "analyse each image's faces and classify it: each person ok, missing, swapped, duplicate or blended "
        "(faces/identity_check.py); the outcome goes to the sidecar",
    )


def retries_option(default: int) -> Any:
    return option(
        default,
        "with the identity check: try up to this many more seeds (seed + 1, ...) until the image passes; the "
        "sidecar records every try and the seed kept",
        limits=(0, 20),
    )

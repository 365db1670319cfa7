"""The JSON sidecar beside each generated image, `NAME_k.json` next to `NAME_k.png`: the one description of
it. Generation (and serving) write it here, and eval reads it here.

    {"prompt": str, "seed": int, ..., every setting of the call,
     "image_index": int, "gate_map": "gates/NAME_k.png" (only with gate maps),
     "persons": [{"name": str, "reference": path | [paths], "face_prompt": str | null,
                  "box": [x0, y0, x1, y1] | null (fractions of the image), "target_landmarks": path | null}]}

Relative paths are read from the sidecar's folder.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dynamicid.errors import InputError

PERSON_FIELDS = ("name", "reference", "face_prompt", "box", "target_landmarks")


def sidecar_path(image_path: str) -> str:
    return os.path.splitext(image_path)[0] + ".json"


def person_entry(person: Any, index: int, box: Any) -> dict[str, Any]:
    """One person of a call (a `generation.Person`) as the sidecar records it."""
    return {
        "name": person.name or f"person {index + 1}",  # as the user counts, as the page and messages do
        "reference": os.path.abspath(person.reference) if isinstance(person.reference, str) else None,
        "face_prompt": person.face_prompt,
        "box": list(box) if box is not None else None,
        "target_landmarks": person.target_landmarks if isinstance(person.target_landmarks, str) else None,
    }


def build(settings: dict[str, Any], persons: list[Any], boxes: list[Any], image_index: int) -> dict[str, Any]:
    """The sidecar of one image: the call's settings, the image's index and its persons."""
    return dict(settings) | {
        "image_index": image_index,
        "persons": [person_entry(p, i, boxes[i]) for i, p in enumerate(persons)],
    }


def write(path: str, sidecar: dict[str, Any]) -> None:
    """Whole or not at all: a reader never meets half a sidecar."""
    partial = path + ".part"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(sidecar, handle, indent=2)
    os.replace(partial, path)


def read(path: str) -> dict[str, Any]:
    """A sidecar's object; InputError naming the file when it is missing, not JSON, or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path} is missing: every image needs its sidecar of the same stem") from None
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: must be a JSON object with prompt and persons; found a {type(value).__name__}")
    return value

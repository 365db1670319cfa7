"""What to score: images, each with its persons (reference photos, requested face prompt) and text prompt.

Three forms are read:
  * a folder of images, each with a JSON sidecar of the same stem (what `dynamicid generate` writes):
      {"prompt": "...", "persons": [{"name": "ann", "reference": "ann.jpg" | [...], "face_prompt": "...",
                                     "box": [x0, y0, x1, y1]}]}
    "box" (optional) is where the person should be, as fractions of the image's width and height.
  * a CSV with one row per (image, person): image, person, reference, face_prompt, prompt, box;
    several reference photos are separated by ";", a box is "x0 y0 x1 y1"
  * a JSON list of {"image": ..., "prompt": ..., "persons": [...]} as in the sidecar.
Relative paths are read from the file (or sidecar) that names them.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class EvalInputError(ValueError):
    pass


@dataclass(frozen=True)
class Person:
    name: str
    references: tuple[str, ...]
    face_prompt: str | None = None
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 as fractions of the image


@dataclass
class EvalItem:
    image: str
    persons: list[Person] = field(default_factory=list)
    prompt: str | None = None


def _paths(value, base: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [v for v in str(value or "").split(";")]
    resolved = tuple(os.path.normpath(os.path.join(base, v.strip())) for v in values if v and v.strip())
    return resolved


def _person(entry: dict, index: int, base: str, where: str) -> Person:
    references = _paths(entry.get("reference", entry.get("references")), base)
    if not references:
        raise EvalInputError(f"{where}: person {index} has no reference photo")
    box = entry.get("box")
    if box is not None:
        if isinstance(box, str):
            box = [float(v) for v in box.replace(";", " ").replace(",", " ").split()]
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise EvalInputError(f"{where}: person {index} box {box} must be [x0, y0, x1, y1] within [0, 1], x0 < x1, y0 < y1")
        box = tuple(float(v) for v in box)
    return Person(str(entry.get("name") or f"person{index}"), references, entry.get("face_prompt") or None, box)


def _item(entry: dict, base: str, where: str) -> EvalItem:
    if "image" not in entry:
        raise EvalInputError(f"{where}: an entry has no 'image'")
    persons = [_person(p, i, base, where) for i, p in enumerate(entry.get("persons") or [])]
    return EvalItem(os.path.normpath(os.path.join(base, entry["image"])), persons, entry.get("prompt") or None)


def read_folder(folder: str) -> list[EvalItem]:
    items = []
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        sidecar = os.path.join(folder, stem + ".json")
        if not os.path.exists(sidecar):
            raise EvalInputError(f"{os.path.join(folder, name)} has no sidecar {stem}.json")
        with open(sidecar, encoding="utf-8") as handle:
            try:
                meta = json.load(handle)
            except ValueError as err:
                raise EvalInputError(f"{sidecar} is not valid JSON: {err}") from None
        items.append(_item(meta | {"image": name}, folder, sidecar))
    return items


def read_csv(path: str) -> list[EvalItem]:
    base = os.path.dirname(os.path.abspath(path))
    by_image: dict[str, EvalItem] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "reference"} - set(reader.fieldnames or [])
        if missing:
            raise EvalInputError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                                 "expected image, person, reference, face_prompt, prompt")
        for line, row in enumerate(reader, start=2):
            image = os.path.normpath(os.path.join(base, row["image"]))
            item = by_image.setdefault(image, EvalItem(image, [], row.get("prompt") or None))
            entry = {"name": row.get("person"), "reference": row["reference"], "face_prompt": row.get("face_prompt"),
                     "box": row.get("box") or None}
            item.persons.append(_person(entry, len(item.persons), base, f"{path}:{line}"))
    return list(by_image.values())


def read_json(path: str) -> list[EvalItem]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as handle:
        try:
            entries = json.load(handle)
        except ValueError as err:
            raise EvalInputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(entries, list):
        raise EvalInputError(f"{path}: expected a JSON list of {{image, persons, prompt}}")
    return [_item(entry, base, path) for entry in entries]


def read_items(source: str) -> list[EvalItem]:
    if not os.path.exists(source):
        raise EvalInputError(f"input not found: {source}")
    if os.path.isdir(source):
        items = read_folder(source)
    elif source.lower().endswith(".csv"):
        items = read_csv(source)
    elif source.lower().endswith(".json"):
        items = read_json(source)
    else:
        raise EvalInputError(f"{source}: give a folder of images with JSON sidecars, a .csv or a .json list")
    if not items:
        raise EvalInputError(f"nothing to score in {source}")
    for item in items:
        for path in (item.image, *(r for p in item.persons for r in p.references)):
            if not os.path.exists(path):
                raise EvalInputError(f"file not found: {path}")
    return items

"""What to score: images, each with its persons (reference photos, requested face prompt) and text prompt.

Three forms are read:
  * a folder of images, each with a JSON sidecar of the same stem: what `dynamicid generate` writes, whose
    schema is `dynamicid.generation.sidecar` (prompt, persons with name, reference, face_prompt and box).
  * a CSV with one row per (image, person): image, person, reference, face_prompt, prompt, box, and
    optionally ground_truth (other photos of the person, for Sim(GT) and copy-paste); several photos are
    separated by ";", a box is "x0 y0 x1 y1"
  * a JSON list of {"image": ..., "prompt": ..., "persons": [...]} as in the sidecar.
Relative paths are read from the file (or sidecar) that names them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

from dynamicid.errors import InputError
from dynamicid.generation import sidecar
from dynamicid.textfiles import read_utf8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class EvalInputError(InputError):
    pass


@dataclass(frozen=True)
class Person:
    name: str
    references: tuple[str, ...]
    face_prompt: str | None = None
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 as fractions of the image
    ground_truth: tuple[str, ...] = ()  # other photos of the person, for Sim(GT) and the copy-paste score
    used: tuple[str, ...] = ()  # the photos generation was given (Sim(Ref)); empty: the references


@dataclass
class EvalItem:
    image: str
    persons: list[Person] = field(default_factory=list)
    prompt: str | None = None
    face_analysis: dict | None = None  # the generation's face analysis, from the sidecar


def _text(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise EvalInputError(f"{where}: field {key!r} must be text, found {type(value).__name__} {value!r}")


def _paths(value, base: str, where: str, name: str = "reference") -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        values = value
    elif value is None or isinstance(value, str):
        values = str(value or "").split(";")
    else:
        raise EvalInputError(f"{where}: field {name!r} must be a path or a list of paths, found {value!r}")
    return tuple(os.path.normpath(os.path.join(base, v.strip())) for v in values if v and v.strip())


def _box(value, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    parts = value.replace(";", " ").replace(",", " ").split() if isinstance(value, str) else value
    try:
        if isinstance(parts, (str, bytes, dict)) or len(parts) != 4 or any(isinstance(v, bool) for v in parts):
            raise TypeError
        box = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise EvalInputError(f"{where}: field 'box' must be four numbers x0 y0 x1 y1, found {value!r}") from None
    if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise EvalInputError(f"{where}: field 'box' {list(box)} must lie within [0, 1] with x0 < x1 and y0 < y1")
    return box


def _person(entry, index: int, base: str, where: str) -> Person:
    where = f"{where}: person {index}"
    if not isinstance(entry, dict):
        raise EvalInputError(f"{where} must be an object with {', '.join(sidecar.PERSON_FIELDS)}; found {entry!r}")
    references = _paths(entry.get("reference", entry.get("references")), base, where)
    if not references:
        raise EvalInputError(f"{where} has no reference photo (field 'reference')")
    name = entry.get("name")
    if name is not None and not isinstance(name, (str, int)):
        raise EvalInputError(f"{where}: field 'name' must be text, found {name!r}")
    return Person(
        str(name or f"person{index}"),
        references,
        _text(entry, "face_prompt", where),
        _box(entry.get("box"), where),
        _paths(entry.get("ground_truth"), base, where, "ground_truth"),
    )


def _item(entry, base: str, where: str) -> EvalItem:
    if not isinstance(entry, dict):
        raise EvalInputError(
            f"{where}: must be a JSON object with image, prompt and persons; found a {type(entry).__name__}"
        )
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        raise EvalInputError(f"{where}: field 'image' must be the image's path, found {image!r}")
    persons = entry.get("persons")
    if not isinstance(persons, list) or not persons:
        raise EvalInputError(
            f"{where}: field 'persons' must be a list of at least one person "
            f'({{"name", "reference", "face_prompt", "box"}}), found {persons!r}'
        )
    return EvalItem(
        os.path.normpath(os.path.join(base, image)),
        [_person(p, i, base, where) for i, p in enumerate(persons)],
        _text(entry, "prompt", where),
        entry.get("face_analysis") if isinstance(entry.get("face_analysis"), dict) else None,
    )


def read_generated(image: str) -> EvalItem:
    """A generated image with its sidecar (what `dynamicid generate` writes)."""
    folder, name = os.path.split(image)
    path = sidecar.sidecar_path(image)
    if not os.path.exists(path):
        raise EvalInputError(f"{image} has no sidecar {os.path.basename(path)}")
    try:
        meta = sidecar.read(path)
    except InputError as err:
        raise EvalInputError(str(err)) from None
    return _item(meta | {"image": name}, folder, path)


def read_folder(folder: str, exclude: frozenset[str] = frozenset()) -> list[EvalItem]:
    return [
        read_generated(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
        if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
        and os.path.abspath(os.path.join(folder, name)) not in exclude
    ]


def read_csv(path: str) -> list[EvalItem]:
    base = os.path.dirname(os.path.abspath(path))
    by_image: dict[str, EvalItem] = {}
    with io.StringIO(read_utf8(path, "eval list", EvalInputError), newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "reference"} - set(reader.fieldnames or [])
        if missing:
            raise EvalInputError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                "expected image, person, reference, face_prompt, prompt"
            )
        for line, row in enumerate(reader, start=2):
            image = os.path.normpath(os.path.join(base, row["image"]))
            item = by_image.setdefault(image, EvalItem(image, [], row.get("prompt") or None))
            entry = {
                "name": row.get("person"),
                "reference": row["reference"],
                "face_prompt": row.get("face_prompt"),
                "box": row.get("box") or None,
                "ground_truth": row.get("ground_truth") or None,
            }
            item.persons.append(_person(entry, len(item.persons), base, f"{path}:{line}"))
    return list(by_image.values())


def read_json(path: str) -> list[EvalItem]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        entries = json.loads(read_utf8(path, "eval list", EvalInputError))
    except ValueError as err:
        raise EvalInputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(entries, list):
        raise EvalInputError(f"{path}: expected a JSON list of {{image, persons, prompt}}")
    return [_item(entry, base, path) for entry in entries]


def read_items(source: str, exclude: tuple[str, ...] = ()) -> list[EvalItem]:
    """The items to score; `exclude` names files never to read as input (eval's own report, when OUTPUT is
    INPUT)."""
    if not os.path.exists(source):
        raise EvalInputError(f"input not found: {source}")
    if os.path.isdir(source):
        items = read_folder(source, frozenset(os.path.abspath(p) for p in exclude))
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

"""Writing generated images, their JSON sidecars (readable by `dynamicid eval`) and gate maps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dynamicid.errors import ConfigError, InputError
from dynamicid.generation import sidecar
from dynamicid.responsible.provenance import save_with_provenance
from dynamicid.responsible.watermark import image_record


def gate_map_image(gate: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A gate map as a heat image (black -> red -> yellow -> white) at the output size (width, height)."""
    peak = float(gate.max()) or 1.0
    level = np.clip(gate / peak, 0, 1)
    rgb = np.stack([np.clip(level * 3, 0, 1), np.clip(level * 3 - 1, 0, 1), np.clip(level * 3 - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)


@dataclass
class SavedGeneration:
    files: list[str]  # everything written: PNGs, sidecars, gate maps
    images: list[str]
    sidecars: list[dict[str, Any]]  # as written beside each image (`generation.sidecar`)


def check_output_folder(folder: str) -> None:
    """Before any model work: OUTPUT must be a folder this user can write (made if missing)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"output {folder} is a file, not a folder; give --output a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"output {folder} cannot be made: {err.strerror}; give --output a folder you can write"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output {folder} is not writable by this user; give --output a folder you can write")


def check_file_name(stem: str) -> None:
    """A file name is a name: no folders, nothing hidden, nothing that leaves OUTPUT."""
    if not stem or stem in (".", "..") or any(c in stem for c in "/\\\x00") or stem.startswith("."):
        raise ConfigError(
            f"file_name {stem!r} must be a plain name (no '/', '\\', leading '.' or empty), such as 'dynamicid'"
        )


def _outputs_of(folder: str, stem: str, k: int) -> list[str]:
    image = os.path.join(folder, f"{stem}_{k}.png")
    return [image, sidecar.sidecar_path(image), os.path.join(folder, "gates", f"{stem}_{k}.png")]


def first_free_index(folder: str, stem: str) -> int:
    """The index after the highest STEM_k already written (image, sidecar or gate map), so a rerun adds
    images instead of replacing them."""
    taken = -1
    for path in (folder, os.path.join(folder, "gates")):
        for name in os.listdir(path) if os.path.isdir(path) else ():
            base, _, number = name.rpartition(".")[0].rpartition("_")
            if base == stem and number.isdigit():
                taken = max(taken, int(number))
    return taken + 1


def model_version(metadata: dict[str, Any], extra: dict[str, Any] | None) -> str:
    """What a call's images name as their model (provenance, credentials): the published version, else the
    one the watermark carries, else the weights given, else the default weights' repo id."""
    from dynamicid.hub import DEFAULTS

    given = extra or {}
    marked = (metadata.get("watermark") or {}).get("model_version")
    return str(given.get("model_version") or marked or given.get("weights") or DEFAULTS["weights"].reference)


def save_generation(
    result: Any,
    persons: Any,
    folder: str,
    stem: str,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    signer: Any = None,
) -> SavedGeneration:
    """Writes STEM_k.png with its sidecar STEM_k.json, and with gate maps gates/STEM_k.png. k counts on from
    the files already there; with `overwrite` it starts at 0 and replaces them (a gate map left from an
    earlier call goes too, so no image is paired with another's map). A `signer`
    (`responsible.credentials.ContentSigner`) signs C2PA content credentials into each image."""
    check_file_name(stem)
    os.makedirs(folder, exist_ok=True)
    saved = SavedGeneration([], [], [])
    boxes = result.metadata.get("boxes") or [None] * len(persons)
    first = 0 if overwrite else first_free_index(folder, stem)
    version = model_version(result.metadata, extra)
    for index, image in enumerate(result.images):
        k = first + index
        image_path, sidecar_file, gate_path = _outputs_of(folder, stem, k)
        save_with_provenance(image, image_path, version)
        record = sidecar.build(dict(result.metadata) | (extra or {}), persons, boxes, index)
        record["watermark"] = image_record(result.metadata.get("watermark"), index)
        if signer is not None:
            signer.sign(image_path, version, record["watermark"].get("payload"))
            record["c2pa"] = {"signed": True, "issuer": signer.issuer}
        if result.gate_maps is not None:
            # In a subfolder, so that the output folder holds only generated images with sidecars (eval's input).
            os.makedirs(os.path.dirname(gate_path), exist_ok=True)
            gate_map_image(result.gate_maps[index], image.size).save(gate_path)
            record["gate_map"] = os.path.relpath(gate_path, folder)
            saved.files.append(gate_path)
        elif os.path.exists(gate_path):
            os.remove(gate_path)
        sidecar.write(sidecar_file, record)
        saved.files += [image_path, sidecar_file]
        saved.images.append(image_path)
        saved.sidecars.append(record)
    return saved


def identity_check_lines(record: dict[str, Any]) -> list[str]:
    """The identity check of a call (`metadata["identity_check"]`) in words: one line per image kept (its
    outcome and each person's), then the verdict with the tries it took and the seed kept."""
    kept = next(t for t in record["tries"] if t["seed"] == record["kept_seed"])
    lines = []
    for index, image in enumerate(kept["outcomes"]):
        persons = ", ".join(f"{p['person']} {p['outcome']}" for p in image["persons"])
        lines.append(f"image {index}: {image['outcome']} ({persons})")
    tries = len(record["tries"])
    verdict = "passed" if record["passed"] else "NOT passed (kept: the try with the most persons ok)"
    lines.append(
        f"identity check {verdict} after {tries} {'try' if tries == 1 else 'tries'}, seed {record['kept_seed']}"
    )
    return lines

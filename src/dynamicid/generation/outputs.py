"""Writing generated images, their JSON sidecars (readable by `dynamicid eval`) and gate maps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dynamicid.generation import sidecar


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


def save_generation(
    result: Any, persons: Any, folder: str, stem: str, extra: dict[str, Any] | None = None
) -> SavedGeneration:
    """Writes STEM_k.png with its sidecar STEM_k.json, and with gate maps gates/STEM_k.png."""
    os.makedirs(folder, exist_ok=True)
    saved = SavedGeneration([], [], [])
    boxes = result.metadata.get("boxes") or [None] * len(persons)
    for k, image in enumerate(result.images):
        image_path = os.path.join(folder, f"{stem}_{k}.png")
        image.save(image_path)
        record = sidecar.build(dict(result.metadata) | (extra or {}), persons, boxes, k)
        if result.gate_maps is not None:
            # In a subfolder, so that the output folder holds only generated images with sidecars (eval's input).
            gate_path = os.path.join(folder, "gates", f"{stem}_{k}.png")
            os.makedirs(os.path.dirname(gate_path), exist_ok=True)
            gate_map_image(result.gate_maps[k], image.size).save(gate_path)
            record["gate_map"] = os.path.relpath(gate_path, folder)
            saved.files.append(gate_path)
        sidecar.write(sidecar.sidecar_path(image_path), record)
        saved.files += [image_path, sidecar.sidecar_path(image_path)]
        saved.images.append(image_path)
        saved.sidecars.append(record)
    return saved

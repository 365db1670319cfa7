"""Writing generated images, their JSON sidecars (readable by `dynamicid eval`) and gate maps."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def gate_map_image(gate: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A gate map as a heat image (black -> red -> yellow -> white) at the output size (width, height)."""
    peak = float(gate.max()) or 1.0
    level = np.clip(gate / peak, 0, 1)
    rgb = np.stack([np.clip(level * 3, 0, 1), np.clip(level * 3 - 1, 0, 1), np.clip(level * 3 - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.NEAREST)


def save_generation(result, persons, folder: str, stem: str, extra: dict | None = None) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    written = []
    boxes = result.metadata.get("boxes") or [None] * len(persons)
    for k, image in enumerate(result.images):
        base = os.path.join(folder, f"{stem}_{k}")
        image.save(base + ".png")
        sidecar = dict(result.metadata) | (extra or {}) | {
            "image_index": k,
            "persons": [
                {
                    "name": p.name or f"person{i}",
                    "reference": os.path.abspath(p.reference) if isinstance(p.reference, str) else None,
                    "face_prompt": p.face_prompt,
                    "box": list(boxes[i]) if boxes[i] is not None else None,
                    "target_landmarks": p.target_landmarks if isinstance(p.target_landmarks, str) else None,
                }
                for i, p in enumerate(persons)
            ],
        }
        if result.gate_maps is not None:
            # In a subfolder, so that the output folder holds only generated images with sidecars (eval's input).
            gate_path = os.path.join(folder, "gates", f"{stem}_{k}.png")
            os.makedirs(os.path.dirname(gate_path), exist_ok=True)
            gate_map_image(result.gate_maps[k], image.size).save(gate_path)
            sidecar["gate_map"] = os.path.relpath(gate_path, folder)
            written.append(gate_path)
        with open(base + ".json", "w") as handle:
            json.dump(sidecar, handle, indent=2)
        written += [base + ".png", base + ".json"]
    return written

"""Where each image's outputs go, and how they are written so that a kill never leaves half a file.

Layout under OUTPUT:
  images/<identity>/<name>.jpg|.png|.txt|.pt   one set per kept face ("flat" layout: images/<name>.*)
  manifest.parquet                             one file, replaced atomically at the end of a run
  summary.json, contact_sheet.png
  _state/<config-hash>/<identity>/<name>.json  per-image completion records: written last, they make a rerun resume
Temporary files are "<target>.tmp-<random>" and renamed into place; a run deletes any it finds.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid

STATE_DIR = "_state"
IMAGES_DIR = "images"
NO_IDENTITY = "_"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize(text: str, limit: int = 60) -> str:
    clean = _UNSAFE.sub("_", text).strip("._-")
    return clean[:limit] or "image"


def base_name(relative: str, sha256: str) -> str:
    """Stable and unique: the file's stem (sanitised) plus 12 hex digits of its content hash."""
    stem = relative.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{sanitize(stem)}-{sha256[:12]}"


def face_name(base: str, face_index: int, policy: str) -> str:
    return base if policy != "all" else f"{base}_f{face_index}"


def identity_folder(identity: str | None) -> str:
    return sanitize(identity) if identity else ""


def face_paths(output: str, identity: str | None, name: str) -> dict[str, str]:
    folder = os.path.join(output, IMAGES_DIR, identity_folder(identity))
    return {ext: os.path.join(folder, f"{name}.{ext}") for ext in ("jpg", "png", "txt", "pt")}


def record_path(output: str, config_hash: str, identity: str | None, base: str) -> str:
    return os.path.join(output, STATE_DIR, config_hash, identity_folder(identity) or NO_IDENTITY, f"{base}.json")


def write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_embedding(path: str, payload: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_record(path: str, record: dict) -> None:
    write_atomic(path, json.dumps(record, default=float).encode("utf-8"))


def remove_temporaries(output: str) -> int:
    """Delete leftovers of a killed run. Returns how many were removed."""
    removed = 0
    for folder, _, files in os.walk(output):
        for name in files:
            if ".tmp-" in name:
                try:
                    os.remove(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed

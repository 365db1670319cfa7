"""Where each image's outputs go, and how they are written so that a kill never leaves half a file.

Layout under OUTPUT:
  images/<identity>/<name>.jpg|.png|.txt|.pt   one set per kept face ("flat" layout: images/<name>.*)
  manifest.parquet                             one file, replaced atomically at the end of a run
  identities.parquet, identity_suggestions.json  the dataset's people, kept across runs (`people`)
  summary.json, contact_sheet.png
  _state/records/<xx>/<input path>.json        per-input completion records: written last, they make a rerun resume
  _state/set_aside/<folder>/<name>.*           the files of faces the manifest does not keep (copies, faces held
                                               for review): out of images/, which holds exactly the `ok` faces,
                                               yet kept so that a rerun resumes them
  _state/lock                                  held by the running job, so a second run on OUTPUT stops at once
Temporary files are "<target>.tmp-<random>" and renamed into place; a run deletes any it finds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable

from dynamicid.atomic import write_atomic

STATE_DIR = "_state"
RECORDS_DIR = "records"
IMAGES_DIR = "images"
SET_ASIDE_DIR = "set_aside"
OUTPUT_EXTENSIONS = ("jpg", "png", "txt", "pt")
LOCK_FILE = "lock"
_ESCAPED = set('/\\%:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}
_MAX_COMPONENT_BYTES = 180  # leaves room for "-<sha>_f<k>.jpg" under the usual 255-byte name limit


def path_component(text: str) -> str:
    """One file or folder name for `text`, readable in any script and distinct for distinct texts.

    Only what a filesystem cannot hold or would read specially is escaped, as %XX of its UTF-8 bytes:
    separators, '%' itself (so the escaping is reversible), control and Windows-reserved characters,
    and a leading '.' or '_' (hidden names, and '_' is prep's own). A name too long for a filesystem is
    cut and given a hash of the whole text."""
    escaped = "".join(_escape(ch) if ch in _ESCAPED or "\udc80" <= ch <= "\udcff" else ch for ch in text)
    if escaped[:1] in (".", "_"):
        escaped = f"%{ord(escaped[0]):02X}" + escaped[1:]
    encoded = escaped.encode("utf-8")
    if len(encoded) <= _MAX_COMPONENT_BYTES:
        return escaped or "%00"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return encoded[: _MAX_COMPONENT_BYTES - 17].decode("utf-8", "ignore") + "~" + digest


def _escape(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogateescape"))


def base_name(relative: str, sha256: str) -> str:
    """The outputs' name: the file's stem, readable, plus 12 hex digits of its content hash."""
    stem = relative.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{path_component(stem)}-{sha256[:12]}"


def face_name(base: str, face_index: int, policy: str) -> str:
    return base if policy != "all" else f"{base}_f{face_index}"


def identity_folder(identity: str | None) -> str:
    """The identity's folder under images/: its name exactly, escaped only where a filesystem needs it."""
    return path_component(identity) if identity else ""


def face_folder(output: str, identity: str | None, set_aside: bool = False) -> str:
    """Where a face's files sit: images/<identity>/, or under _state/set_aside/ when the manifest does not
    keep it."""
    root = os.path.join(output, STATE_DIR, SET_ASIDE_DIR) if set_aside else os.path.join(output, IMAGES_DIR)
    return os.path.join(root, identity_folder(identity))


def face_paths(output: str, identity: str | None, name: str, set_aside: bool = False) -> dict[str, str]:
    folder = face_folder(output, identity, set_aside)
    return {ext: os.path.join(folder, f"{name}.{ext}") for ext in OUTPUT_EXTENSIONS}


def move_face_files(name: str, source_folder: str, target_folder: str) -> bool:
    """Moves a face's four files from one folder to another (a rename each). Returns whether any was there
    to move; a file already moved is left alone, so an interrupted move can be run again."""
    moved = False
    for extension in OUTPUT_EXTENSIONS:
        before = os.path.join(source_folder, f"{name}.{extension}")
        if os.path.exists(before):
            os.makedirs(target_folder, exist_ok=True)
            os.replace(before, os.path.join(target_folder, f"{name}.{extension}"))
            moved = True
    return moved


def record_path(output: str, relative: str) -> str:
    """The completion record of one input file, keyed by its path below INPUT (not by its content or the
    settings, which the record holds), so a changed input or setting finds the outputs it replaces."""
    shard = hashlib.sha256(relative.encode("utf-8", "surrogatepass")).hexdigest()[:2]
    return os.path.join(output, STATE_DIR, RECORDS_DIR, shard, path_component(relative) + ".json")


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


def remove_temporaries(output: str, is_temporary: Callable[[str], bool] = lambda name: ".tmp-" in name) -> int:
    """Delete leftovers of a killed run (files whose name `is_temporary`, by default prep's and write_atomic's
    "<target>.tmp-<random>"). Returns how many were removed."""
    removed = 0
    for folder, _, files in os.walk(output):
        for name in files:
            if is_temporary(name):
                try:
                    os.remove(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


_PNG_END = b"IEND\xaeB`\x82"


def face_files_problem(paths: dict[str, str], dim: int | None) -> str | None:
    """Why a kept face's four files cannot be used, from cheap checks that prep's resume, `prep --verify` and
    training share: each exists, the JPEG and PNG end where their format says (a cut file does not) and have
    sound headers, the caption is UTF-8, and the embedding loads with `dim` finite values. None when all is
    well."""
    import torch

    from dynamicid.errors import first_line
    from dynamicid.imagefile import ImageRules, Rejected, check_header

    try:
        for path, ending in ((paths["jpg"], b"\xff\xd9"), (paths["png"], _PNG_END)):
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - len(ending)))
                if handle.read() != ending:
                    return f"{path}: the file is cut short (no end marker)"
            try:
                check_header(path, ImageRules(min_side=1))  # the same header checks as every image read
            except Rejected as rejection:
                return f"{path}: {rejection.reason}: {rejection.message}"
        with open(paths["txt"], encoding="utf-8") as handle:
            handle.read()
        payload = torch.load(paths["pt"], map_location="cpu", weights_only=True)
    except UnicodeDecodeError:
        return f"{paths['txt']}: not UTF-8 text"
    except Exception as err:  # a missing file, or torch's many kinds for a damaged one
        return f"{getattr(err, 'filename', None) or paths['pt']}: {first_line(err)}"
    vector = payload.get("embedding") if isinstance(payload, dict) else None
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or (dim is not None and vector.shape[0] != dim):
        found = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        wanted = f"{dim} numbers (the manifest's embedding_dim)" if dim is not None else "a vector"
        return f"{paths['pt']}: the embedding should be {wanted}, found {found}"
    if not bool(torch.isfinite(vector).all()):
        return f"{paths['pt']}: the embedding holds NaN or infinite values"
    return None

"""The measurements behind faces/identity_thresholds.py, on ../shared/faces: per embedder, the cosines of
two photos of one person and of two people, and of each photo and its copies (JPEG quality 50, halved,
cropped by 6% per side), with the face-hash distances of the copies and of different photos.

    python benchmarks/identity_thresholds.py [--out benchmarks/results-identity-thresholds.json]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dynamicid.faces import FaceAnalyzer
from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.faces.face_hash import face_hash, hash_distance

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = str(SHARED / "models" / "insightface-real")
EMBEDDERS = {
    "dlib-resnet": FaceAnalysisConfig(),
    "insightface (EdgeFace-XS)": FaceAnalysisConfig(
        detector="insightface", detector_model=REAL, embedder="insightface", embedder_model=REAL
    ),
}


def copies(image: Image.Image) -> dict[str, Image.Image]:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=50)
    dx, dy = int(image.width * 0.06), int(image.height * 0.06)
    return {
        "jpeg50": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "half": image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS),
        "crop6": image.crop((dx, dy, image.width - dx, image.height - dy)),
    }


def faces_of(analyzer: FaceAnalyzer, photo: Path) -> dict[str, tuple[np.ndarray, str]]:
    """(unit embedding, face hash) of the photo and of each of its copies."""
    upright = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    found = {}
    for kind, image in {"original": upright, **copies(upright)}.items():
        rgb = np.asarray(image)
        (analysis,) = analyzer.analyze_faces(rgb, analyzer.detect(rgb)[:1], expressions=False)
        vector = np.asarray(analysis.embedding, float)
        found[kind] = (vector / np.linalg.norm(vector), face_hash(analysis.aligned))
    return found


def measure(config: FaceAnalysisConfig, photos: list[Path]) -> dict:
    analyzer = FaceAnalyzer(config)
    found = {photo: faces_of(analyzer, photo) for photo in photos}
    same, strangers, other_photo_bits = [], [], []
    for a, b in itertools.combinations(photos, 2):
        cosine = float(found[a]["original"][0] @ found[b]["original"][0])
        if hash_distance(found[a]["original"][1], found[b]["original"][1]) <= 8:
            continue  # obama/5_240p.jpg is obama/1.jpg shrunk: a copy, not another photo
        (same if a.parent == b.parent else strangers).append(cosine)
        other_photo_bits.append(hash_distance(found[a]["original"][1], found[b]["original"][1]))
    result = {
        "same_person_lowest": round(min(same), 3),
        "same_person_other_photo_highest": round(max(same), 3),
        "strangers_highest": round(max(strangers), 3),
        "other_photos_fewest_bits": min(other_photo_bits),
    }
    for kind in ("jpeg50", "half", "crop6"):
        cosines = [float(found[p]["original"][0] @ found[p][kind][0]) for p in photos]
        bits = [hash_distance(found[p]["original"][1], found[p][kind][1]) for p in photos]
        result[kind] = {"cosine_lowest": round(min(cosines), 3), "bits_most": max(bits)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    photos = sorted(p for p in (SHARED / "faces" / "identities").rglob("*.*"))
    results = {name: measure(config, photos) for name, config in EMBEDDERS.items()}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

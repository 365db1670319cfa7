"""Clustering quality on ../shared/faces with the cluster layout's operating points: every photo's face,
unlabelled, through `identities.find_identities`, scored by pairs against the folders (pairwise precision:
of the pairs put in one person, the share that are one person; recall: of the true pairs, the share put
together). Run at the verification point (`same_person`) and at the clustering point (`cluster_edge`), per
embedder, with the range of edge cosines at which this set is clustered without a wrong merge.

    python benchmarks/clustering.py [--out benchmarks/results-clustering.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identity_thresholds import EMBEDDERS, SHARED, faces_of  # noqa: E402

from dynamicid.faces import FaceAnalyzer  # noqa: E402
from dynamicid.faces.identity_thresholds import MEASURED, IdentityThresholds  # noqa: E402
from dynamicid.prep.identities import find_identities, pairwise_precision_recall  # noqa: E402
from dynamicid.prep.neighbours import FaceVectors  # noqa: E402

THRESHOLD_KEY = {"dlib-resnet": "dlib-resnet", "insightface (EdgeFace-XS)": "insightface"}


def pairwise(truth: list[str], found: list[str]) -> dict:
    codes = lambda names: np.unique(names, return_inverse=True)[1]  # noqa: E731
    precision, recall = pairwise_precision_recall(codes(found), codes(truth))
    return {"precision": round(precision, 4), "recall": round(recall, 4), "people_found": len(set(found))}


def clustered(vectors: np.ndarray, edge: float, near_copy: float) -> list[str]:
    count = len(vectors)
    faces = FaceVectors(
        [f"{i}.jpg" for i in range(count)],
        np.zeros(count, np.int64),
        [None] * count,
        vectors,
        np.arange(count, dtype=np.uint64) * np.uint64(0x0F0F0F0F0F0F0F0F),  # far apart: no photo is a copy
    )
    found = find_identities(faces, IdentityThresholds(edge, near_copy, edge), cluster=True)
    return list(found.names or [])


def measure(name: str, photos: list[Path], grid: float = 0.005) -> dict:
    analyzer = FaceAnalyzer(EMBEDDERS[name])
    vectors = np.stack([faces_of(analyzer, photo)["original"][0] for photo in photos])
    truth = [photo.parent.name for photo in photos]
    points = MEASURED[THRESHOLD_KEY[name]]
    result = {
        "photos": len(photos),
        "people": len(set(truth)),
        "at_same_person": {
            "cosine": points.same_person,
            **pairwise(truth, clustered(vectors, points.same_person, points.near_copy)),
        },
        "at_cluster_edge": {
            "cosine": points.cluster_edge,
            **pairwise(truth, clustered(vectors, points.cluster_edge, points.near_copy)),
        },
    }
    scores = {
        round(float(edge), 3): pairwise(truth, clustered(vectors, float(edge), points.near_copy))
        for edge in np.arange(-0.2, 1.0, grid)
    }
    exact = [edge for edge, score in scores.items() if score["precision"] == score["recall"] == 1.0]
    result["edges_without_error"] = [round(min(exact), 3), round(max(exact), 3)] if exact else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--embedders", nargs="+", default=list(EMBEDDERS), choices=list(EMBEDDERS))
    parser.add_argument("--grid", type=float, default=0.005, help="step of the edge cosines tried")
    args = parser.parse_args()
    # 5_240p.jpg is 1.jpg shrunk: a copy, which curation settles before clustering
    photos = sorted(p for p in (SHARED / "faces" / "identities").rglob("*.*") if "240p" not in p.name)
    results = {name: measure(name, photos, args.grid) for name in args.embedders}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

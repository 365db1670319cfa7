"""Time and memory of prep's identity curation (neighbours, near copies, Chinese whispers, distances) at
10k, 100k and 1M synthetic 512-d embeddings, each size in a fresh process so its peak memory is its own.

Synthetic people: n/10 identities with 10 faces each; a face is its person's random unit centre plus
Gaussian noise, so that two faces of one person have a cosine near 0.6 and two people near 0 (ArcFace-like
spreads); hashes are random, so no near copies exist. Pairwise precision and recall of the clusters against
the true people are reported with the times.

    python benchmarks/cluster_scale.py --sizes 10000 100000 1000000 --out benchmarks/results-cluster-scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 512
FACES_PER_PERSON = 10


def synthetic_faces(count: int, seed: int = 0):
    from dynamicid.prep.neighbours import FaceVectors

    rng = np.random.default_rng(seed)
    people = count // FACES_PER_PERSON
    centres = rng.standard_normal((people, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(people), FACES_PER_PERSON)
    vectors = np.empty((count, DIM), np.float16)  # half precision, as prep holds them; built a block at a time
    for start in range(0, count, 65536):
        block = rng.standard_normal((min(65536, count - start), DIM), dtype=np.float32)
        block *= np.float32(0.8 / np.sqrt(DIM))
        block += centres[truth[start : start + len(block)]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + len(block)] = block
    hashes = rng.integers(0, 2**63, count, dtype=np.int64).astype(np.uint64)
    faces = FaceVectors([f"f{i}" for i in range(count)], np.zeros(count, int), [None] * count, vectors, hashes)
    return faces, truth


def one_size(count: int) -> dict:
    from dynamicid.faces.identity_thresholds import MEASURED
    from dynamicid.prep import identities

    faces, truth = synthetic_faces(count)
    started = time.perf_counter()
    found = identities.find_identities(faces, MEASURED["insightface"], cluster=True)
    seconds = time.perf_counter() - started
    precision, recall = identities.pairwise_precision_recall(found.label, truth)
    return {
        "faces": count,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "embeddings_gb": round(faces.vectors.nbytes / 2**30, 2),
        "clusters": int(len(np.unique(found.label))),
        "people": int(count // FACES_PER_PERSON),
        "pairwise_precision": round(precision, 4),
        "pairwise_recall": round(recall, 4),
        "near_copies_found": int((found.copy_of >= 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    rows = []
    for count in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(count)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {_cores()} cores", "sizes": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()

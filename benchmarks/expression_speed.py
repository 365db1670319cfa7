"""Cost per face of the expression classifier on one CPU core (issue 15: under 5 ms), as prep runs it:
crop and grayscale each aligned 512 face, then one forward pass over the faces and their mirrors.

    python benchmarks/expression_speed.py --json results-expression-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a Spark task's share
    from skimage import data

    from dynamicid.faces import FaceAnalyzer
    from dynamicid.faces.emotion import ExpressionClassifier

    aligned = FaceAnalyzer(with_embedder=False).analyze(data.astronaut(), max_faces=1, embed=False)[0].aligned
    classifier = ExpressionClassifier()
    results = {"cpu": os.cpu_count(), "threads": 1, "ms_per_face": {}}
    for faces in (1, 8, 16, 32):
        batch = [aligned] * faces
        classifier.probabilities(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(args.repeats):
            classifier.probabilities(batch)
        ms = (time.perf_counter() - started) * 1000 / (args.repeats * faces)
        results["ms_per_face"][faces] = round(ms, 2)
        print(f"{faces:3d} faces per call: {ms:5.2f} ms per face (with its mirror), one thread")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

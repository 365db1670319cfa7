"""prep's throughput with the default dlib backend against InsightFace on real weights (issue 13), in one run.

The same photos go through the same Spark `local[N]` session twice: once with the defaults (dlib HOG,
dlib 68 landmarks, dlib ResNet) and once with `--detector insightface --embedder insightface` on
../shared/models/insightface-real (SCRFD-2.5G with keypoints and EdgeFace-XS; landmarks stay dlib's).
The photos: the identity photos of ../shared/faces, their mirror images and two close-ups of each,
each saved as JPEG at `--copies` qualities (distinct files, so nothing is resumed).

    python benchmarks/backends_throughput.py --cores 2 --copies 3 --json results-backends-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def build_corpus(folder: Path, copies: int, sources: int | None = None) -> int:
    from dynamicid.faces import FaceAnalyzer

    analyzer = FaceAnalyzer(with_embedder=False)
    count = 0
    for path in sorted((SHARED / "faces" / "identities").glob("*/*"))[:sources]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        box = analyzer.detect(rgb)[0]
        variants = {"": rgb, "_mirror": np.ascontiguousarray(rgb[:, ::-1])}
        for fill in (0.8, 1.0):
            cx, cy, side = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, max(box.width, box.height) / fill
            x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            variants[f"_closeup{int(fill * 100)}"] = rgb[y0 : int(cy + side / 2), x0 : int(cx + side / 2)]
        target = folder / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for suffix, image in variants.items():
            for copy in range(copies):
                Image.fromarray(np.ascontiguousarray(image)).save(
                    target / f"{path.stem}{suffix}_q{90 + copy}.jpg", quality=90 + copy
                )
                count += 1
    return count


def run(spark, source: Path, output: Path, faces) -> dict:
    from dynamicid.prep import PrepConfig, run_prep
    from dynamicid.prep.schema import STAGE_TIMINGS

    started = time.perf_counter()
    result = run_prep(PrepConfig(input=str(source), output=str(output), progress=False, faces=faces), spark=spark)
    seconds = time.perf_counter() - started
    manifest = result.manifest()
    kept = manifest[manifest.status == "ok"]
    return {
        "seconds": round(seconds, 2),
        "images": len(manifest),
        "kept": len(kept),
        "rejected": manifest.loc[manifest.status != "ok", "reason"].value_counts().to_dict(),
        "images_per_s": round(len(manifest) / seconds, 2),
        "ms_per_kept_image": {s: round(float(kept[f"ms_{s}"].mean()), 1) for s in STAGE_TIMINGS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--sources", type=int, default=None, help="use the first N identity photos (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dynamicid.faces import FaceAnalysisConfig
    from dynamicid.prep.sparkenv import build_session

    models = str(SHARED / "models" / "insightface-real")
    work = Path(tempfile.mkdtemp(prefix="backends-bench-"))
    images = build_corpus(work / "in", args.copies, args.sources)
    spark = build_session(f"local[{args.cores}]", app_name="backends-benchmark")
    configs = {
        "dlib (default)": FaceAnalysisConfig(),
        "insightface (SCRFD-2.5G + EdgeFace-XS, dlib landmarks)": FaceAnalysisConfig(
            detector="insightface", detector_model=models, embedder="insightface", embedder_model=models
        ),
    }
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cores": args.cores,
        "images": images,
        "runs": {},
    }
    for index, (label, faces) in enumerate(configs.items()):
        results["runs"][label] = run(spark, work / "in", work / f"out{index}", faces)
        r = results["runs"][label]
        print(
            f"{label:55s} {r['images_per_s']:6.2f} images/s ({r['seconds']} s), kept {r['kept']}/{r['images']}, "
            f"rejected {r['rejected']}, ms: {r['ms_per_kept_image']}"
        )
    spark.stop()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

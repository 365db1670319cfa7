"""What `prep`'s driver costs at scale (issue 4's table: 7,000 and 1,000,000 images).

The workers' cost grows with the images and shrinks with the cores; the driver's does not shrink.
This times, for N synthetic manifest rows shaped like real ones (68 landmarks, aligned landmarks,
affine, every column), each driver step that runs after or around the Spark job:
  listing   the input listing, streamed into a Parquet file a batch at a time (`spark_job.write_listing`),
            then read by Spark, repartitioned and counted
  merge     `runner.merge_rows` with curation in the path: the embeddings read into one array, FAISS
            neighbours, near copies and each face's distance to its identity, exact duplicates and the
            split in Spark; Spark reads the job's Parquet parts (one per task of 32 images), sorts and writes
            manifest.parquet. The embeddings are as wide as the chosen embedder's (--dim: dlib 128,
            InsightFace 512), 500 identities each around its own centre
  summary   `report.tally_manifest` (the report's columns, a batch at a time), the summary and the
            contact sheet
and the driver's peak memory. Listing the files themselves is not timed here (it depends on the
filesystem); `prep_throughput.py` measures the workers.

    python benchmarks/driver_scale.py --rows 7000 1000000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def template_rows(count: int, seed: int = 0) -> pa.Table:
    from dynamicid.prep.schema import ARROW_SCHEMA, empty_row

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        points = (rng.random((68, 2)) * 1000).round(3)
        rows.append(
            empty_row()
            | {
                "source_bytes": 1_500_000,
                "sha256": f"{i:064x}",
                "identity": f"person{i % 500}",
                "name": f"photo{i}-{i:08x}",
                "face_index": 0,
                "faces_detected": 1,
                "status": "ok" if i % 50 else "rejected",
                "reason": None if i % 50 else "no_face",
                "format": "JPEG",
                "width": 3000,
                "height": 2000,
                "exif_rotated": False,
                "bbox": [100.0, 200.0, 600.0, 700.0],
                "landmarks": points.tolist(),
                "aligned_landmarks": (points / 2).tolist(),
                "landmark_convention": "ibug68",
                "affine": [[0.5, 0.01, -10.0], [-0.01, 0.5, -20.0]],
                "detector_model": "dlib-hog-frontal",
                "landmarks_model": "dlib-68",
                "embedding_model": "dlib-resnet",
                "embedding_dim": 128,
                "captioner_model": "measured-v1",
                "caption": "a close-up photo of a person's face, with a smile, looking ahead",
                "face_prompt": "with a smile, looking ahead",
                "emotion": "happy",
                "pitch": 1.0,
                "yaw": 2.0,
                "roll": 0.5,
                "smile": 0.6,
                "mouth_open": 0.1,
                "eyes_closed": 0.0,
                "brows_raised": 0.2,
                "sharpness": 150.0,
                "config_hash": "abcdef123456",
                "resumed": False,
            }
            | {
                f"ms_{s}": 10.0
                for s in (
                    "read",
                    "decode",
                    "detect",
                    "landmarks",
                    "align",
                    "prompt",
                    "embed",
                    "caption",
                    "write",
                    "total",
                )
            }
        )
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


IDENTITIES = 500


def write_parts(folder: str, rows: int, dim: int, per_part: int = 32) -> None:
    """The job's parts: every row its own photo (sha256, face hash), an embedding near its identity's centre."""
    part = template_rows(per_part)
    index = part.schema.get_field_index
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((IDENTITIES, dim)).astype(np.float32)
    for start in range(0, rows, per_part):
        n = min(per_part, rows - start)
        people = [(start + i) % IDENTITIES for i in range(n)]
        names = pa.array([f"person{p}/img{start + i:08d}.jpg" for i, p in enumerate(people)])
        vectors = centres[people] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        columns = {
            "relative_path": names,
            "source_path": pa.array([f"/data/{x}" for x in names.to_pylist()]),
            "identity": pa.array([f"person{p}" for p in people]),
            "sha256": pa.array([f"{start + i:064x}" for i in range(n)]),
            "face_hash": pa.array([f"{rng.integers(0, 2**63):016x}" for _ in range(n)]),
            "embedding": pa.array(list(vectors), type=part.schema.field("embedding").type),
            "embedding_dim": pa.array([dim] * n, type=pa.int32()),
        }
        table = part.slice(0, n)
        for name, values in columns.items():
            table = table.set_column(index(name), name, values)
        pq.write_table(table, os.path.join(folder, f"part-{start // per_part:06d}.parquet"))


def measure(rows: int, spark, workdir: str, dim: int = 128) -> dict:
    from dynamicid.faces.analyzer import FaceAnalysisConfig
    from dynamicid.prep import report
    from dynamicid.prep.config import PrepConfig
    from dynamicid.prep.discover import InputFile
    from dynamicid.prep.runner import merge_rows
    from dynamicid.prep.spark_job import INPUT_DDL, write_listing
    from dynamicid.prep.sparkenv import spark_uri

    result = {"rows": rows, "parts": -(-rows // 32), "embedding_dim": dim}
    found = (
        InputFile(
            f"/data/person{i % 500}/img{i:08d}.jpg", f"person{i % 500}/img{i:08d}.jpg", f"person{i % 500}", 1_500_000
        )
        for i in range(rows)
    )  # as the walk yields them, one at a time
    started = time.perf_counter()
    listing = os.path.join(workdir, f"listing-{rows}.parquet")
    assert write_listing(found, listing) == rows
    result["listing_write_s"] = time.perf_counter() - started
    partitions = max(-(-rows // 32), 8)
    count = spark.read.schema(INPUT_DDL).parquet(spark_uri(listing)).repartition(partitions).count()
    result["listing_s"] = time.perf_counter() - started
    assert count == rows

    parts = os.path.join(workdir, f"rows-{rows}")
    os.makedirs(parts)
    started = time.perf_counter()
    # In another process: the job's workers write the parts, and the driver's peak must not count them.
    subprocess.run([sys.executable, __file__, "--write-parts", parts, str(rows), str(dim)], check=True)
    result["writing_parts_s (not a driver cost)"] = time.perf_counter() - started

    started = time.perf_counter()
    manifest_path = os.path.join(workdir, f"manifest-{rows}.parquet")
    faces = FaceAnalysisConfig(embedder={128: "dlib-resnet", 512: "insightface"}.get(dim, "dlib-resnet"))
    config = PrepConfig(input=workdir, output=workdir, split="0.9,0.05,0.05", faces=faces, progress=False)
    merge_rows(spark, parts, manifest_path, config)
    result["merge_s"] = time.perf_counter() - started

    output = os.path.join(workdir, f"out-{rows}")
    os.makedirs(output)
    started = time.perf_counter()
    tally = report.tally_manifest(manifest_path, 48)
    tally.summary(1.0, 1.0)
    report.contact_sheet(tally, output, limit=48, manifest_path=manifest_path)  # no faces on disk: tiles stay empty
    result["summary_s"] = time.perf_counter() - started
    result["driver_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    shutil.rmtree(parts)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[7000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512, help="embedding width: 128 (dlib) or 512 (InsightFace)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--write-parts", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_parts:
        folder, rows, dim = args.write_parts
        write_parts(folder, int(rows), int(dim))
        return

    from dynamicid.prep.sparkenv import build_session

    spark = build_session("local[2]", app_name="driver-scale")
    workdir = tempfile.mkdtemp(prefix="driver-scale-")
    results = []
    try:
        for rows in args.rows:
            result = measure(rows, spark, workdir, args.dim)
            results.append(result)
            print(json.dumps(result))
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

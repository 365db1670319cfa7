"""Throughput of `prep`'s per-image work three ways, in one run, on the same cores and corpus:
Spark local[N] (the real job), a plain multiprocessing pool of N processes, and one process.

    python benchmarks/prep_throughput.py CORPUS --cores 2 [--images 1000] [--skip-single]

All three call the same function, `PrepStage.process_file`, with fresh output folders (no resume),
under the same one-thread-per-process settings that Spark's workers get. Each timing includes
starting the workers and loading the models, as a real run would; Spark's is its job time (the JVM
start, a few seconds, is reported apart as wall time). Prints images/s, the ratios and per-stage ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from multiprocessing import Pool

from dynamicid.faces import FaceAnalysisConfig
from dynamicid.prep import PrepConfig
from dynamicid.prep.discover import list_local
from dynamicid.prep.schema import STAGE_TIMINGS
from dynamicid.prep.sparkenv import worker_environment

os.environ.update({k: v for k, v in worker_environment().items() if k != "PYSPARK_PYTHON"})

_STAGE = None


def _init(config: PrepConfig) -> None:
    global _STAGE
    from dynamicid.prep.process import stage_for

    _STAGE = stage_for(config).setup()


def _work(item) -> dict:
    row = _STAGE.process_file(*item)[0]
    return {f"ms_{s}": row.get(f"ms_{s}") for s in STAGE_TIMINGS} | {"status": row["status"]}


def _stage_means(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["status"] == "ok"]
    return {s: round(sum(r[f"ms_{s}"] or 0 for r in kept) / max(len(kept), 1), 1) for s in STAGE_TIMINGS}


def run_single(files, config) -> tuple[float, dict]:
    started = time.perf_counter()
    _init(config)
    rows = [_work(item) for item in files]
    return time.perf_counter() - started, _stage_means(rows)


def run_pool(files, config, cores: int) -> tuple[float, dict]:
    started = time.perf_counter()
    with Pool(cores, initializer=_init, initargs=(config,)) as pool:
        rows = pool.map(_work, files, chunksize=4)
    seconds = time.perf_counter() - started
    assert len(rows) == len(files)
    return seconds, _stage_means(rows)


def run_spark(corpus: str, config: PrepConfig, cores: int) -> tuple[float, float, dict]:
    from dynamicid.prep.runner import run_prep
    from dynamicid.prep.sparkenv import build_session

    spark = build_session(f"local[{cores}]", app_name="prep-benchmark")
    started = time.perf_counter()
    result = run_prep(config, spark=spark)
    wall = time.perf_counter() - started
    spark.stop()
    return result.summary["job_seconds"], wall, result.summary


def spark_run(corpus: str, folder: str, output: str, embedder: str, cores: int, images: int) -> dict:
    """One Spark job over `folder` with this embedder; prints and returns its figures."""
    config = PrepConfig(input=folder, output=output, progress=False, faces=FaceAnalysisConfig(embedder=embedder))
    job, wall, summary = run_spark(corpus, config, cores)
    print(
        f"spark local[{cores}], {embedder}: {images / job:6.2f} images/s  "
        f"(job {job:.1f} s, wall {wall:.1f} s incl. start-up)"
    )
    print(f"  kept {summary['kept_faces']}, rejected {summary['rejected']}")
    print(f"  mean ms per kept image: {summary['mean_stage_ms_kept']}")
    return {
        "spark_job_s": round(job, 1),
        "spark_wall_s": round(wall, 1),
        "spark_images_per_s": round(images / job, 2),
        "kept": summary["kept_faces"],
        "rejected": summary["rejected"],
        "mean_stage_ms": summary["mean_stage_ms_kept"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=None, help="use the first N files (default: all)")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument(
        "--embedders",
        default="dlib-resnet",
        help="comma-separated: one Spark run per embedder, in this order (e.g. dlib-resnet-native,dlib-resnet)",
    )
    args = parser.parse_args()

    files = list_local(args.corpus, "by-identity")
    if args.images:
        files = files[: args.images]
    items = [(f.path, f.relative, f.identity) for f in files]
    size_gb = sum(f.size for f in files) / 1e9
    scratch = tempfile.mkdtemp(prefix="prep-bench-")
    figures = {
        "images": len(items),
        "gb": round(size_gb, 2),
        "cores": args.cores,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"{len(items)} images, {size_gb:.2f} GB, {args.cores} cores")

    embedders = args.embedders.split(",")

    def config(name: str, embedder: str = embedders[0]) -> PrepConfig:
        return PrepConfig(
            input=args.corpus,
            output=os.path.join(scratch, name),
            progress=False,
            faces=FaceAnalysisConfig(embedder=embedder),
        )

    if not args.skip_single:
        seconds, stages = run_single(items, config("single"))
        figures["single_images_per_s"] = round(len(items) / seconds, 2)
        figures["single_stage_ms"] = stages
        print(f"one process:        {len(items) / seconds:6.2f} images/s  ({seconds:.1f} s)  ms/image {stages}")
    if not args.skip_pool:
        seconds, stages = run_pool(items, config("pool"), args.cores)
        figures["pool_images_per_s"] = round(len(items) / seconds, 2)
        figures["pool_stage_ms"] = stages
        print(
            f"multiprocessing({args.cores}): {len(items) / seconds:6.2f} images/s  ({seconds:.1f} s)  ms/image {stages}"
        )
    input_folder = args.corpus
    if args.images:  # Spark reads a folder: give it exactly the same files
        input_folder = os.path.join(scratch, "subset")
        for f in files:
            os.makedirs(os.path.join(input_folder, os.path.dirname(f.relative)), exist_ok=True)
            os.symlink(f.path, os.path.join(input_folder, f.relative))
    for embedder in embedders:
        run = spark_run(
            args.corpus, input_folder, os.path.join(scratch, f"spark-{embedder}"), embedder, args.cores, len(items)
        )
        figures.setdefault("spark_runs", {})[embedder] = run
        figures |= run  # the last embedder's run is the headline
    if "pool_images_per_s" in figures:
        figures["spark_vs_pool"] = round(figures["spark_images_per_s"] / figures["pool_images_per_s"], 3)
        print(f"spark / pool = {figures['spark_vs_pool']:.3f}")
    if "single_images_per_s" in figures:
        figures["per_core_images_per_s"] = round(figures["spark_images_per_s"] / args.cores, 2)
        print(
            f"spark per core = {figures['per_core_images_per_s']:.2f} images/s; "
            f"one process = {figures['single_images_per_s']:.2f} images/s"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

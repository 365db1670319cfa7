"""Throughput of `prep`'s per-image work three ways, in one run, on the same cores and corpus:
Spark local[N] (the real job), a plain multiprocessing pool of N processes, and one process.

    python benchmarks/prep_throughput.py CORPUS --cores 2 [--images 1000] [--skip-single]

All three call the same function, `PrepStage.process_file`, with fresh output folders (no resume).
Prints images/s and the ratios; model loading is excluded from the pool and single timings, while
Spark's timing is its job (tasks, scheduling, Python workers, model loading in the workers).
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

from dynamicid.prep import PrepConfig
from dynamicid.prep.discover import list_local

_STAGE = None


def _init(config: PrepConfig) -> None:
    global _STAGE
    from dynamicid.prep.process import stage_for

    _STAGE = stage_for(config).setup()


def _work(item) -> str:
    rows = _STAGE.process_file(*item)
    return rows[0]["status"]


def run_single(files, config) -> float:
    _init(config)
    started = time.perf_counter()
    for item in files:
        _work(item)
    return time.perf_counter() - started


def run_pool(files, config, cores: int) -> float:
    with Pool(cores, initializer=_init, initargs=(config,)) as pool:
        pool.map(_work, files[: cores * 2], chunksize=1)  # warm: every worker has loaded its models
        shutil.rmtree(config.output, ignore_errors=True)
        started = time.perf_counter()
        statuses = pool.map(_work, files, chunksize=4)
        seconds = time.perf_counter() - started
    assert len(statuses) == len(files)
    return seconds


def run_spark(corpus: str, config: PrepConfig, cores: int) -> tuple[float, float, dict]:
    from dynamicid.prep.runner import run_prep
    from dynamicid.sparkenv import build_session

    spark = build_session(f"local[{cores}]", app_name="prep-benchmark")
    started = time.perf_counter()
    result = run_prep(config, spark=spark)
    wall = time.perf_counter() - started
    spark.stop()
    return result.summary["job_seconds"], wall, result.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=None, help="use the first N files (default: all)")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    files = list_local(args.corpus, "by-identity")
    if args.images:
        files = files[: args.images]
    items = [(f.path, f.relative, f.identity) for f in files]
    size_gb = sum(f.size for f in files) / 1e9
    scratch = tempfile.mkdtemp(prefix="prep-bench-")
    figures = {"images": len(items), "gb": round(size_gb, 2), "cores": args.cores,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    print(f"{len(items)} images, {size_gb:.2f} GB, {args.cores} cores")

    def config(name: str) -> PrepConfig:
        return PrepConfig(input=args.corpus, output=os.path.join(scratch, name), progress=False)

    if not args.skip_single:
        seconds = run_single(items, config("single"))
        figures["single_images_per_s"] = round(len(items) / seconds, 2)
        print(f"one process:        {len(items) / seconds:6.2f} images/s  ({seconds:.1f} s)")
    if not args.skip_pool:
        seconds = run_pool(items, config("pool"), args.cores)
        figures["pool_images_per_s"] = round(len(items) / seconds, 2)
        print(f"multiprocessing({args.cores}): {len(items) / seconds:6.2f} images/s  ({seconds:.1f} s)")
    spark_config = config("spark")
    if args.images:  # Spark reads a folder: give it exactly the same files
        subset = os.path.join(scratch, "subset")
        for f in files:
            os.makedirs(os.path.join(subset, os.path.dirname(f.relative)), exist_ok=True)
            os.symlink(f.path, os.path.join(subset, f.relative))
        spark_config = PrepConfig(input=subset, output=spark_config.output, progress=False)
    job, wall, summary = run_spark(args.corpus, spark_config, args.cores)
    figures |= {"spark_job_s": round(job, 1), "spark_wall_s": round(wall, 1),
                "spark_images_per_s": round(len(items) / job, 2), "kept": summary["kept_faces"],
                "rejected": summary["rejected"], "mean_stage_ms": summary["mean_stage_ms_kept"]}
    print(f"spark local[{args.cores}]:    {len(items) / job:6.2f} images/s  (job {job:.1f} s, wall {wall:.1f} s incl. start-up)")
    print(f"  kept {summary['kept_faces']}, rejected {summary['rejected']}")
    print(f"  mean ms per kept image: {summary['mean_stage_ms_kept']}")
    if "pool_images_per_s" in figures:
        figures["spark_vs_pool"] = round(figures["spark_images_per_s"] / figures["pool_images_per_s"], 3)
        print(f"spark / pool = {figures['spark_vs_pool']:.3f}")
    if "single_images_per_s" in figures:
        figures["per_core_images_per_s"] = round(figures["spark_images_per_s"] / args.cores, 2)
        print(f"spark per core = {figures['per_core_images_per_s']:.2f} images/s; "
              f"one process = {figures['single_images_per_s']:.2f} images/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

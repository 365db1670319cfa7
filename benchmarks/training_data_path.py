"""Anchoring step time with the real data path against the same step fed from memory (issue 18), on CPU
with the tiny models, in one process:

  memory     every micro-batch read beforehand and served from a dict (the data costs nothing)
  workers    the real path: DataLoader workers read ahead, CLIP features from the cache (the default)
  in-step    the old path: each step reads and decodes its files and runs the CLIP image encoder

Per-step seconds are the trainer's own, after `--warmup` steps; the median over the rest.

    python benchmarks/training_data_path.py --steps 30 --resolution 128 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))


class FromMemory:
    """ReadAhead's interface over micro-batches read beforehand."""

    def __init__(self, dataset, workers, prefetch=2, count=0):
        self.batches = {k: dataset[k] for k in range(count)}

    def __getitem__(self, index):
        return self.batches[index]

    def close(self):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dynamicid.prep import PrepConfig, run_prep
    from dynamicid.prep.sparkenv import build_session
    from dynamicid.testing.tiny_models import make_tiny_models
    from dynamicid.training import data as td
    from dynamicid.training.config import AnchorConfig
    from dynamicid.training.stages import train_anchor

    work = tempfile.mkdtemp(prefix="data-path-")
    models = make_tiny_models(os.path.join(work, "models"))
    spark = build_session("local[2]", app_name="data-path-benchmark")
    faces_folder = os.path.join(HERE, "..", "..", "shared", "faces", "identities")
    run_prep(PrepConfig(input=faces_folder, output=os.path.join(work, "data"), progress=False), spark=spark)
    spark.stop()

    def config(name, **options):
        return AnchorConfig(
            data=os.path.join(work, "data"),
            base_model=models["sd15"],
            clip_image_encoder=models["clip-image"],
            output=os.path.join(work, name),
            steps=args.steps,
            batch_size=args.batch_size,
            resolution=args.resolution,
            lora_rank=4,
            checkpoint_every=0,
            progress=False,
            **options,
        )

    def step_seconds(result):
        return statistics.median(h["seconds"] for h in result["history"][args.warmup :])

    results = {
        "cpus": os.cpu_count(),
        "steps": args.steps,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
    }
    train_anchor(config("cache-warm"))  # fills the CLIP cache once, as a first run does
    cache_dir = os.path.join(work, "cache-warm", "clip-cache")
    for name in ("memory", "workers"):
        os.makedirs(os.path.join(work, name), exist_ok=True)
        os.symlink(cache_dir, os.path.join(work, name, "clip-cache"))
    with mock.patch.object(td, "ReadAhead", lambda dataset, workers: FromMemory(dataset, workers, count=args.steps)):
        results["memory_s"] = step_seconds(train_anchor(config("memory")))
    results["workers_s"] = step_seconds(train_anchor(config("workers", data_workers=args.workers)))
    results["in_step_s"] = step_seconds(train_anchor(config("in-step", data_workers=0, cache_clip=False)))
    results["workers_vs_memory"] = results["workers_s"] / results["memory_s"]
    results["in_step_vs_memory"] = results["in_step_s"] / results["memory_s"]
    for key, value in results.items():
        print(f"{key:20s} {value:.4f}" if isinstance(value, float) else f"{key:20s} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

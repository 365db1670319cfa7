"""InternVL captioning throughput: batched against one face at a time, in one process (issue 4).

Random weights at InternVL3-2B's shapes (InternViT-300M at 448 px, Qwen2.5-1.5B; speed does not
depend on the weights' values), written to a folder and loaded by our InternVLCaptioner, the code
`prep --captioner internvl` runs. The generation config has no end token, so every caption is
exactly `--new-tokens` long (64 by default, as the issue asks). Times `describe()` on aligned
512 px faces, one at a time and in batches, and prints images/s and the ratio.

    python benchmarks/captioning.py                       # GPU (bf16), 64 faces, batches of 1/8/16/32
    python benchmarks/captioning.py --tiny --faces 8      # CPU smoke run with the tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--batches", default="1,8,16,32", help="batch sizes of plain generate; the first row is the baseline"
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny model (CPU smoke run)")
    parser.add_argument(
        "--static-batches",
        default="",
        help="batch sizes to run again with the static KV cache (compiled on a GPU), in the same process",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dynamicid.faces.backends.internvl_backend import InternVLCaptioner
    from dynamicid.testing.tiny_models import INTERNVL_2B, INTERNVL_TINY, tiny_internvl

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    folder = os.path.join(tempfile.mkdtemp(prefix="internvl-bench-"), "InternVL3-2B-random")
    started = time.perf_counter()
    model = tiny_internvl(folder, size=INTERNVL_TINY if args.tiny else INTERNVL_2B, device=device, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    captioner = InternVLCaptioner(folder, max_new_tokens=args.new_tokens)
    captioner.model.generation_config.eos_token_id = None  # random weights: never stop early, write --new-tokens
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"{parameters / 1e9:.2f} B parameters, {dtype}, on {name}; "
        f"built and loaded in {time.perf_counter() - started:.0f} s"
    )

    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(args.faces)]
    results = {"device": name, "dtype": str(dtype), "parameters": parameters, "new_tokens": args.new_tokens, "runs": []}
    baseline = None
    plain = [(int(b), False) for b in args.batches.split(",") if b]
    static = [(int(b), True) for b in args.static_batches.split(",") if b]
    for batch, use_static in plain + static:
        captioner.batch_size, captioner.static_cache = batch, use_static
        captioner.describe(faces[:batch])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        captioner.describe(faces)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rate = len(faces) / seconds
        baseline = baseline or rate
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results["runs"].append(
            {"batch": batch, "static_cache": use_static, "seconds": seconds, "images_per_s": rate, "peak_gib": peak}
        )
        print(
            f"batch {batch:>3}{' static' if use_static else ''}: {rate:7.2f} images/s "
            f"({seconds:.1f} s for {len(faces)}), {rate / baseline:5.2f}x the first row"
            + (f", peak {peak:.1f} GiB" if peak else "")
        )
        if args.json:  # after every row: a run stopped at its budget keeps what it measured
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

"""The watermark's cost beside a generation on a CPU (issue 37 §1): SD1.5's UNet at its real size (random
weights: the arithmetic does not depend on their values) runs denoising steps at 512² with the
classifier-free-guidance batch of 2, alone and then with the watermark marking 512² images on its one
thread at the same time, as `serve` and `generate` do. Reported: the seconds per step alone and beside the
marking, the seconds to mark one image beside the steps, and the marking's share of a 50-step generation.

    python benchmarks/watermark_cost.py [--steps 3] [--side 512] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_common import build_unet, results_path  # noqa: E402


def _steps(unet, side: int, count: int) -> float:
    """Seconds per UNet call on the CFG batch of 2 at `side`² (one untimed call first)."""
    latents = torch.randn(2, 4, side // 8, side // 8)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        unet(latents, 500, encoder_hidden_states=text)
        started = time.perf_counter()
        for _ in range(count):
            unet(latents, 500, encoder_hidden_states=text)
    return (time.perf_counter() - started) / count


def main() -> None:
    from dynamicid.responsible.watermark import payload_bits, shared_watermarker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="the tiny UNet: checks the script runs")
    parser.add_argument("--out", default=results_path("results-watermark-cost.json"))
    args = parser.parse_args()
    unet = build_unet(args.tiny, torch.device("cpu"), torch.float32)
    marker = shared_watermarker()  # as generation marks: one thread that does not spin
    image = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    bits = payload_bits("benchmark-model", "request-0")
    marker.mark(image, bits)  # the sessions' first run is slower
    started = time.perf_counter()
    marker.mark(image, bits)
    alone_mark = time.perf_counter() - started

    alone_step = _steps(unet, args.side, args.steps)
    marks: list[float] = []
    stop = threading.Event()

    def marking() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            marker.mark(image, bits)
            marks.append(time.perf_counter() - began)

    worker = threading.Thread(target=marking, daemon=True)
    worker.start()
    beside_step = _steps(unet, args.side, args.steps)
    stop.set()
    worker.join()
    beside_mark = float(np.median(marks)) if marks else None
    generation = 50 * alone_step
    result = {
        "machine": f"{os.cpu_count()} cores, CPU, fp32, torch threads {torch.get_num_threads()}",
        "unet": "tiny" if args.tiny else "SD1.5 size, random weights",
        "side": args.side,
        "seconds_per_step_alone": round(alone_step, 3),
        "seconds_per_step_beside_marking": round(beside_step, 3),
        "seconds_to_mark_alone": round(alone_mark, 3),
        "seconds_to_mark_beside_steps": None if beside_mark is None else round(beside_mark, 3),
        "marks_beside_steps": len(marks),
        "mark_share_of_a_50_step_generation": round((beside_mark or alone_mark) / generation, 5),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

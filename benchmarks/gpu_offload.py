"""`enable_model_cpu_offload` on a GPU: the tiny models, persons given as ready ID tokens (the GPU machine
has no dlib), the same seed with and without offload. Writes the images' largest difference, the peak GPU
memory of both and their times.

    python benchmarks/gpu_offload.py --json OUT.json      # needs CUDA; on a CPU it runs the first half only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from dynamicid.generation import DynamicIDPipeline
from dynamicid.generation.persons import EncodedPerson
from dynamicid.generation.request import Person
from dynamicid.testing.tiny_models import make_tiny_models


def run(pipe, persons, embeds) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    out = pipe(
        "a portrait photo",
        persons,
        person_embeds=embeds,
        num_inference_steps=4,
        height=64,
        width=64,
        seed=0,
        output_type="np",
    )
    return out.images, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    folders = make_tiny_models(tempfile.mkdtemp(prefix="offload-"))
    pipe = DynamicIDPipeline.from_pretrained(
        folders["sd15"],
        folders["dynamicid"],
        folders["clip-image"],
        device="cuda" if cuda else "cpu",
        dtype=torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    tokens, width = pipe.face_encoder.config.num_tokens, pipe.face_encoder.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    embeds = [
        EncodedPerson(
            torch.randn(tokens, width, generator=generator),
            torch.zeros(tokens, width),
            "in a neutral expression, in front view",
            False,
            [0.0, 0.0, 1.0, 1.0],
        )
        for _ in range(2)
    ]
    persons = [Person(None, name=f"person{i}") for i in range(2)]
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    placed, report["on_device_s"] = run(pipe, persons, embeds)
    if cuda:
        report["on_device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        pipe.to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        pipe.enable_model_cpu_offload()
        offloaded, report["offloaded_s"] = run(pipe, persons, embeds)
        report["offloaded_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        report["max_abs_difference"] = float(np.abs(placed - offloaded).max())
        report["same_images"] = bool(np.allclose(placed, offloaded, atol=1e-5))
    report["image_shape"] = list(placed.shape)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()

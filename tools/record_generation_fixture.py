"""Records what the pipeline makes on the tiny models for two fixed requests, so a rewrite of the pipeline
can be checked to give the same images for the same seed (tests/data/generation_fixture.npz).

    .venv/bin/python tools/record_generation_fixture.py ../shared/faces tests/data/generation_fixture.npz
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

REQUESTS = {
    "one": dict(persons=[("obama/1.jpg", None, None)], height=64, width=64, seed=7),
    "two_edited": dict(
        persons=[
            ("obama/1.jpg", "in a sad expression, in front view", (0.05, 0.1, 0.45, 0.6)),
            ("biden/1.jpg", None, (0.55, 0.1, 0.95, 0.6)),
        ],
        height=64,
        width=96,
        seed=3,
    ),
}


def generate(pipe, faces: str, request: dict) -> np.ndarray:
    from dynamicid.generation import Person

    persons = [
        Person(f"{faces}/identities/{path}", face_prompt=prompt, box=box) for path, prompt, box in request["persons"]
    ]
    out = pipe(
        "a portrait photo",
        persons,
        num_inference_steps=3,
        height=request["height"],
        width=request["width"],
        seed=request["seed"],
        output_type="np",
        watermark=False,  # the model's own pixels; the watermark has its own tests
    )
    return np.asarray(out.images)


def main(faces: str, target: str) -> None:
    from dynamicid.generation import DynamicIDPipeline
    from dynamicid.testing.tiny_models import make_tiny_models

    models = make_tiny_models(tempfile.mkdtemp())
    pipe = DynamicIDPipeline.from_pretrained(models["sd15"], models["dynamicid"], models["clip-image"])
    np.savez_compressed(target, **{name: generate(pipe, faces, request) for name, request in REQUESTS.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""What `dynamicid serve` adds to a generation (issue 17), on the tiny models on the CPU.

Per request: the same request (one person, 64x64, 4 steps, a fixed seed) timed as a direct pipeline call
and through the server's /generate API with gradio_client, alternately, in one process (the server on the
loopback address). The person's tokens are cached by the server after the first request, so the direct
call reuses `encode_persons` output too. Start: `dynamicid serve --tiny` as a user starts it, timed from the
command to its page answering and to the first image back.

    .venv/bin/python benchmarks/serve_overhead.py ../shared/faces/identities/obama/1.jpg
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from benchmarks_common import results_path, write_json  # same folder


def _port() -> int:
    from dynamicid.testing.serve import free_port

    return free_port()


def per_request(photo: str, repeats: int) -> dict:
    from gradio_client import Client, handle_file

    from dynamicid.generation import DynamicIDPipeline, Person
    from dynamicid.serving.app import build_app
    from dynamicid.serving.engine import Engine
    from dynamicid.testing.tiny_models import make_tiny_models

    models = make_tiny_models(tempfile.mkdtemp())
    pipe = DynamicIDPipeline.from_pretrained(models["sd15"], models["dynamicid"], models["clip-image"])
    pipe.set_progress_bar_config(disable=True)
    app = build_app(Engine(pipe), tiny=True)
    app.queue()
    _, url, _ = app.launch(server_port=_port(), prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    settings = {"steps": 4, "height": 64, "width": 64, "seed": 3}
    embeds = pipe.encode_persons([Person(photo)])
    direct, served = [], []
    for _ in range(repeats + 1):  # the first of each is a warm-up
        started = time.perf_counter()
        pipe("a portrait", [Person(photo)], person_embeds=embeds, num_inference_steps=4, height=64, width=64, seed=3)
        direct.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.predict("a portrait", [handle_file(photo)], "[]", "[]", json.dumps(settings), api_name="/generate")
        served.append(time.perf_counter() - started)
    app.close()
    direct_s, served_s = statistics.median(direct[1:]), statistics.median(served[1:])
    return {
        "direct_s": round(direct_s, 3),
        "served_s": round(served_s, 3),
        "overhead_s": round(served_s - direct_s, 3),
        "ratio": round(served_s / direct_s, 3),
        "repeats": repeats,
    }


def first_image(photo: str) -> dict:
    from gradio_client import Client, handle_file

    from dynamicid.testing.serve import start_tiny_server

    started = time.perf_counter()
    server, url = start_tiny_server()
    try:
        ready = time.perf_counter() - started
        Client(url, verbose=False).predict(
            "a portrait",
            [handle_file(photo)],
            "[]",
            "[]",
            json.dumps({"steps": 4, "height": 64, "width": 64}),
            api_name="/generate",
        )
        return {"start_to_ready_s": round(ready, 2), "start_to_first_image_s": round(time.perf_counter() - started, 2)}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    photo = os.path.abspath(sys.argv[1])
    result = {"machine": "2-core build machine, CPU, tiny models"} | per_request(photo, 5) | first_image(photo)
    print(json.dumps(result, indent=1))
    write_json(results_path("results-serve-cpu.json"), "cpu", [result])


if __name__ == "__main__":
    main()

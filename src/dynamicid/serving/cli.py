"""`dynamicid serve`."""

from __future__ import annotations

from dynamicid.options import Command, config_from
from dynamicid.serving.config import ServeConfig


def _check_gradio() -> None:
    import importlib.util

    from dynamicid.errors import SetupError

    if importlib.util.find_spec("gradio") is None:
        raise SetupError('serve needs Gradio, which is not installed: pip install "dynamicid[serve]"')


def run_serve(args) -> int:
    import signal
    import threading

    from dynamicid.serving.access import PrivateCache

    config = config_from(args, ServeConfig)
    _check_gradio()
    cache = PrivateCache()  # before Gradio is imported: it reads the folder's name once
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        from dynamicid.serving.app import serve

        app, _, url = serve(config, cache, block=False)
        print(f"serving on {url} (ctrl-c to stop)", flush=True)
        print(f"uploads and results: {cache.folder} (yours only; kept {config.keep_files_hours:g} h)", flush=True)
        try:
            stopped.wait()  # until SIGTERM; Ctrl-C raises KeyboardInterrupt here
        finally:
            app.close()
    finally:
        cache.close()
    return 0


COMMANDS = (
    Command(
        "serve",
        "the web app and HTTP API: several persons, each with a face prompt and a box, in the browser",
        "Serves DynamicID in the browser and over HTTP (Gradio). Models load once at start and take the same options "
        "as `generate` (folders or Hugging Face repo ids). Requests wait in a queue, one generation at a time per "
        "pipeline; the page shows the queue position and progress, and a request can be cancelled. Listens on "
        "127.0.0.1 unless --host says otherwise; use --auth when you open it. The API: gradio_client's "
        "Client(URL).predict(prompt, photos, face_prompts_json, boxes_json, settings_json, api_name='/generate') "
        "returns the images and the JSON sidecar (README).",
        ServeConfig,
        run_serve,
    ),
)

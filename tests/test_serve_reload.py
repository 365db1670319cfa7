"""`serve` keeps serving the last good model (issue 35 §5): weights never mapped from the watched folder, a new
version must make an image before it serves, a bad record is logged once, a cancel never blocks the server,
and Gradio's analytics are off."""

import json
import logging
import os
import threading
import time

import numpy as np
import pytest

from dynamicid.generation.request import Settings
from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest
from dynamicid.serving.reload import ModelWatch


@pytest.fixture
def published(tiny_pipe, tmp_path):
    folder = tmp_path / "published"
    tiny_pipe.save_pretrained(str(folder))
    _record(folder, 1)
    return folder


def _record(folder, version, **extra) -> None:
    record = {"version": version, "fingerprint": f"f{version}", "published": f"day {version}"} | extra
    (folder / "dynamicid_run.json").write_text(json.dumps(record))


def _load(reference):
    from dynamicid.generation import DynamicIDPipeline

    pipe = DynamicIDPipeline.from_pretrained(reference)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(engine, photo) -> np.ndarray:
    from dynamicid.imagefile import load_image

    settings = Settings(steps=2, height=64, width=64, seed=3)
    result = engine.generate(GenerationRequest("a portrait", [PersonRequest(photo)], settings))
    return load_image(result.images[0]).rgb.astype(int)


def _weights(folder) -> list:
    return sorted(p for p in folder.rglob("*.safetensors") if p.stat().st_size > 1000)


def test_weights_changed_in_place_change_nothing_served(published, shared_faces, tmp_path):
    photo = str(shared_faces / "identities/obama/1.jpg")
    watch = ModelWatch(str(published), _load, snapshots=str(tmp_path / "copies"))
    engine = Engine(watch.load_current(), watch=watch)
    before = _image(engine, photo)
    first, second = _weights(published)[:2]
    with open(first, "r+b") as handle:  # cut short in place: a mapped file would kill the server (SIGBUS)
        handle.truncate(first.stat().st_size // 3)
    size = second.stat().st_size
    second.write_bytes(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).tobytes())  # same size
    assert np.array_equal(_image(engine, photo), before) and engine.model_version.startswith("version 1")


def test_a_new_version_that_cannot_make_an_image_is_not_switched_to(published, shared_faces, tmp_path, caplog):
    photo = str(shared_faces / "identities/obama/1.jpg")
    watch = ModelWatch(str(published), _load, snapshots=str(tmp_path / "copies"))
    engine = Engine(watch.load_current(), watch=watch)
    before = _image(engine, photo)
    for path in _weights(published):  # a damaged upload
        path.write_bytes(b"not weights")
    _record(published, 2)
    with caplog.at_level(logging.WARNING, logger="dynamicid.serving.reload"):
        assert np.array_equal(_image(engine, photo), before)
        _image(engine, photo)
    said = [r.message for r in caplog.records if "version 2" in r.message]
    assert len(said) == 1 and "cannot serve" in said[0] and "still serving version 1" in said[0]
    assert engine.model_version.startswith("version 1")


def test_a_model_that_loads_but_cannot_generate_is_refused_by_its_probe(published, tmp_path):
    broken = []

    def load(reference):
        pipe = _load(reference)
        if broken:
            pipe.unet.forward = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("CUDA error: bad weights"))
        return pipe

    watch = ModelWatch(str(published), load, snapshots=str(tmp_path / "copies"))
    engine = Engine(watch.load_current(), watch=watch)
    broken.append(True)
    _record(published, 2)
    assert watch.newer() is None and watch.refused == (2, "f2") and engine.model_version.startswith("version 1")
    assert watch.newer() is None  # the same version is not tried again
    broken.clear()
    _record(published, 3)
    assert watch.newer() is not None and watch.label().startswith("version 3")
    assert len(os.listdir(tmp_path / "copies")) == 1  # the copy of version 1 went with it


def test_a_garbage_record_is_logged_with_its_reason(published, tmp_path, caplog):
    watch = ModelWatch(str(published), _load, snapshots=str(tmp_path / "copies"))
    with caplog.at_level(logging.WARNING, logger="dynamicid.serving.reload"):
        (published / "dynamicid_run.json").write_text("{garbage")
        assert watch.newer() is None
        _record(published, "abc")
        assert watch.newer() is None and watch.newer() is None
    messages = [r.message for r in caplog.records]
    assert len(messages) == 2 and "cannot be read" in messages[0] and "'abc' is not a version" in messages[1]
    assert watch.label().startswith("version 1")


class _SlowEngine:
    """Steps of 0.3 s that stop when asked: what a real step on a busy GPU costs."""

    def __init__(self):
        self.stopped = threading.Event()

    def generate(self, request, on_step, should_stop):
        for step in range(100):
            time.sleep(0.3)
            on_step(step + 1, 100)
            if should_stop():
                self.stopped.set()
                return None
        return None


def test_a_cancel_returns_at_once_and_the_run_stops_at_its_next_step():
    from dynamicid.serving.app import run_generation

    engine = _SlowEngine()
    request = GenerationRequest("p", [PersonRequest("x.jpg")], Settings(steps=100))
    running = run_generation(engine, request)
    next(running)
    started = time.monotonic()
    running.close()  # what the server does for a cancel, on its event loop
    assert time.monotonic() - started < 0.1
    assert engine.stopped.wait(2.0)


def test_gradio_analytics_are_off(tiny_pipe):
    from dynamicid.serving.app import build_app

    app = build_app(Engine(tiny_pipe), tiny=True)
    assert app.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"

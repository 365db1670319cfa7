"""The optional safety filter (issue 37 §5): NudeNet's real detector passes real photos and the server's
images; an image it flags is withheld, with the reason, and nothing of the request is written. No test
image shows nudity: the withholding path is driven by a detector that answers in NudeNet's own format."""

import logging
import os
import sys

import pytest
from PIL import Image

from dynamicid.errors import SetupError
from dynamicid.generation.request import GenerationError, Settings
from dynamicid.responsible.safety import WITHHELD, SafetyFilter, build_safety_filter


class _Answers:
    """A detector answering in NudeNet's format with fixed detections, and counting its calls."""

    def __init__(self, detections):
        self.detections, self.calls = detections, 0

    def detect(self, bgr):
        assert bgr.ndim == 3 and bgr.shape[2] == 3  # an OpenCV-ordered array, as NudeNet reads one
        self.calls += 1
        return self.detections


def test_nudenets_real_detector_passes_real_photos_and_knows_the_withheld_classes(shared_faces):
    nudenet = pytest.importorskip("nudenet.nudenet")
    assert WITHHELD <= set(getattr(nudenet, "__labels"))  # the names NudeNet's model answers with
    real = SafetyFilter()
    for photo in ("obama/1.jpg", "biden/2.jpg", "kit_harington/1.jpeg"):
        verdict = real.judge(Image.open(shared_faces / "identities" / photo))
        assert not verdict.withheld and verdict.found == ()


def _request(shared_faces):
    from dynamicid.serving.engine import GenerationRequest, PersonRequest

    photo = str(shared_faces / "identities/obama/1.jpg")
    return GenerationRequest("a portrait", [PersonRequest(photo)], Settings(steps=1, height=64, width=64))


def test_a_flagged_image_is_withheld_with_the_reason_and_nothing_is_written(tiny_pipe, shared_faces, tmp_path):
    from dynamicid.serving.app import _responsible_line
    from dynamicid.serving.engine import Engine

    (tmp_path / "out").mkdir()
    (tmp_path / "out2").mkdir()
    flagged = _Answers([{"class": "BUTTOCKS_EXPOSED", "score": 0.81, "box": [0, 0, 9, 9]}])
    engine = Engine(tiny_pipe, output_root=str(tmp_path / "out"), safety=SafetyFilter(flagged))
    assert "safety filter" in _responsible_line(engine)
    with pytest.raises(GenerationError, match="safety filter withheld the image: it found BUTTOCKS_EXPOSED 0.81"):
        engine.generate(_request(shared_faces))
    assert flagged.calls == 1 and os.listdir(tmp_path / "out") == []
    harmless = [
        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 9, 9]},
        {"class": "FEMALE_BREAST_COVERED", "score": 0.9, "box": [0, 0, 9, 9]},
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.3, "box": [0, 0, 9, 9]},  # below the score that counts
    ]
    passed = Engine(tiny_pipe, output_root=str(tmp_path / "out2"), safety=SafetyFilter(_Answers(harmless)))
    assert os.path.exists(passed.generate(_request(shared_faces)).images[0])
    assert "safety filter" not in _responsible_line(Engine(tiny_pipe))


def test_the_operator_chooses_and_a_missing_filter_is_said(monkeypatch, caplog):
    assert build_safety_filter("off") is None
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as on a machine without the extra
    with caplog.at_level(logging.WARNING, "dynamicid.responsible.safety"):
        assert build_safety_filter("auto") is None
    assert "nudenet is not installed" in caplog.text and "AGPL-3.0" in caplog.text
    with pytest.raises(SetupError, match=r"dynamicid\[safety\]"):
        build_safety_filter("on")


def test_serve_defaults_to_auto_and_its_help_names_the_licence():
    from dynamicid.serving.config import ServeConfig

    assert ServeConfig().safety_filter == "auto"
    help_text = ServeConfig.__dataclass_fields__["safety_filter"].metadata["help"]
    assert "AGPL-3.0" in help_text and "auto" in help_text

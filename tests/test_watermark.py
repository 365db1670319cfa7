"""The invisible watermark (issue 37 §1): on real photos it survives the issue's attacks and stays out of
unmarked ones; `generate` marks by default with a payload its sidecar explains, and --no-watermark says so."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from dynamicid.errors import SetupError
from dynamicid.responsible import watermark
from dynamicid.responsible.watermark import (
    MODEL_BITS,
    REQUEST_BITS,
    Watermarker,
    check_bits,
    code_word,
    payload_bits,
    short_id,
)


def _square(path, side=512) -> np.ndarray:
    return np.asarray(ImageOps.fit(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), (side, side)))


def _jpeg(rgb, quality):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _half(rgb):
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def marker():
    return Watermarker(threads=0)  # reading, as verify does, on every core


def test_the_payload_names_model_and_request_and_code_words_stay_apart():
    word = code_word("org/model@v3", "request-7")
    bits = payload_bits("org/model@v3", "request-7")
    assert int("".join(str(int(b)) for b in bits), 2) == word
    payload = word >> 20
    assert payload >> REQUEST_BITS == short_id("org/model@v3", MODEL_BITS)
    assert payload & (2**REQUEST_BITS - 1) == short_id("request-7", REQUEST_BITS)
    assert check_bits(payload) == word & (2**20 - 1)
    from dynamicid.responsible.watermark import codebook

    words = codebook()
    assert words.shape == (4096, 32) and len({w.tobytes() for w in words}) == 4096
    agreement = words[:512] @ words[:512].T / 32  # 1 on the diagonal; how alike two code words are elsewhere
    assert agreement[~np.eye(512, dtype=bool)].max() <= 0.75  # any two differ in 4 bits or more


def test_a_few_flipped_bits_are_corrected_and_noise_is_not_a_mark():
    from dynamicid.responsible.watermark import _reading

    bits = payload_bits("m", "r")
    logits = (bits * 2 - 1) * 5.0
    logits[[0, 9, 30]] *= -0.3  # three bits flipped, without much confidence (as after a JPEG)
    found = _reading(logits)
    assert found.marked and found.word == f"{code_word('m', 'r'):08x}"
    noise = _reading(np.random.default_rng(0).normal(0, 5, 32))
    assert not noise.marked and noise.payload is None


def test_real_photos_keep_the_mark_through_the_attacks_and_unmarked_ones_are_not_reported(marker, shared_faces):
    photos = [shared_faces / "identities/obama/1.jpg"]  # benchmarks/watermark_robustness.py measures 30
    for index, path in enumerate(photos):
        rgb = _square(path)
        bits = payload_bits("model", f"request-{index}")
        marked = marker.mark(rgb, bits)
        psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - rgb) ** 2))
        assert psnr >= 38, (path, psnr)
        clean = marker.read(marked)
        assert clean.marked and clean.word == f"{code_word('model', f'request-{index}'):08x}"
        assert clean.request_id == short_id(f"request-{index}", REQUEST_BITS)
        dy = rgb.shape[0] // 10
        for attack, attacked in {
            "jpeg50": _jpeg(marked, 50),
            "half": _half(marked),
            "crop10": marked[dy:-dy, dy:-dy],
            "half_jpeg75": _jpeg(_half(marked), 75),
        }.items():
            assert marker.read(attacked).marked, (path, attack)
        for unmarked in (rgb, _half(rgb)):
            found = marker.read(unmarked)
            assert not found.marked and found.payload is None, (path, found.score)


def test_generate_marks_by_default_and_the_sidecar_explains_the_payload(tiny_models, shared_faces, tmp_path):
    """The tiny models draw noise, which no watermark reader is asked to survive; so the wiring is checked
    exactly: the marked image is the unmarked one with the sidecar's payload embedded."""
    from test_generate import _small_generate

    on, off = tmp_path / "on", tmp_path / "off"
    assert _small_generate(tiny_models, shared_faces, on, "--height", "256", "--width", "256") == 0
    assert _small_generate(tiny_models, shared_faces, off, "--height", "256", "--width", "256", "--no-watermark") == 0
    record = json.loads((on / "dynamicid_0.json").read_text())["watermark"]
    assert record["on"] and record["model_version"] == tiny_models["dynamicid"]
    assert record["payload"] == f"{code_word(record['model_version'], record['request_id']):08x}"
    assert json.loads((off / "dynamicid_0.json").read_text())["watermark"] == {"on": False}
    unmarked = np.asarray(Image.open(off / "dynamicid_0.png").convert("RGB"))
    expected = Watermarker().mark(unmarked, payload_bits(record["model_version"], record["request_id"]))
    marked = np.asarray(Image.open(on / "dynamicid_0.png").convert("RGB"))
    assert np.abs(marked.astype(int) - expected).max() <= 1 and np.abs(marked.astype(int) - unmarked).max() > 2


def test_a_missing_model_package_is_named_with_the_command_that_installs_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SetupError, match="pip install --no-deps invisible-watermark"):
        watermark.Watermarker()


def test_the_server_marks_unless_told_not_to_and_its_page_says_which(tiny_pipe, shared_faces):
    from dynamicid.generation.request import Settings
    from dynamicid.serving.app import _responsible_line
    from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest

    photo = str(shared_faces / "identities/obama/1.jpg")
    request = GenerationRequest("a portrait", [PersonRequest(photo)], Settings(steps=1, height=64, width=64))
    for marking, said in [(True, "invisible watermark"), (False, "watermark is off on this server")]:
        engine = Engine(tiny_pipe, watermark=marking)
        assert said in _responsible_line(engine)
        assert engine.generate(request).sidecars[0]["watermark"]["on"] is marking


def test_verify_reports_each_image_and_exits_by_the_worst(marker, shared_faces, tmp_path, capsys):
    from dynamicid import cli
    from dynamicid.responsible.provenance import save_with_provenance

    rgb = _square(shared_faces / "identities/kit_harington/1.jpeg")
    marked = Image.fromarray(marker.mark(rgb, payload_bits("org/model@v1", "req-1")))
    save_with_provenance(marked, str(tmp_path / "made.png"), "org/model@v1")
    payload = f"{code_word('org/model@v1', 'req-1'):08x}"
    (tmp_path / "made.json").write_text(json.dumps({"watermark": {"on": True, "payload": payload}}))
    marked.save(tmp_path / "stripped.jpg", quality=85)  # no metadata, re-encoded: the pixels still say it
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")

    made, stripped = str(tmp_path / "made.png"), str(tmp_path / "stripped.jpg")
    assert cli.main(["verify", made, stripped, "--model-version", "org/model@v1", "--json"]) == 0
    found = {os.path.basename(entry["path"]): entry for entry in json.loads(capsys.readouterr().out)}
    assert found["made.png"]["watermarked"] and found["made.png"]["payload"] == payload
    assert found["made.png"]["matches"] == "sidecar" and found["made.png"]["c2pa"] == "none"
    assert found["made.png"]["metadata"]["source_type"] == "trainedAlgorithmicMedia"
    assert found["stripped.jpg"]["watermarked"] and found["stripped.jpg"]["metadata"] is None
    assert found["stripped.jpg"]["matches"] == "model"
    assert cli.main(["verify", made, str(tmp_path / "plain.png")]) == 1
    shown = capsys.readouterr().out
    assert "made.png" in shown and "plain.png" in shown and " NO " in shown
    assert cli.main(["verify", made, str(tmp_path / "broken.png")]) == 2
    out, err = capsys.readouterr()
    assert "made.png" in out and "broken.png: error:" in err

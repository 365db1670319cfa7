"""What the toolkit prints and draws says what is true (issue 35 §7, §8): quiet means quiet, counts agree with
their nouns, pictures draw no missing-glyph boxes, the model card claims only what the run did, the run
report says what will rerun, a detector's threshold is checked against its own scores, and `--help` reads."""

import os
import subprocess
import sys

import pytest

from dynamicid.errors import ConfigError


def test_quiet_and_no_progress_print_nothing_but_the_result(tiny_models, shared_faces, tmp_path):
    """No weight-loading bars, no advice about torchvision, nothing on stderr at all."""
    argv = [sys.executable, "-m", "dynamicid.cli", "generate", "--base-model", tiny_models["sd15"]]
    argv += ["--weights", tiny_models["dynamicid"], "--clip-image-encoder", tiny_models["clip-image"]]
    argv += ["--prompt", "a portrait", "--person", str(shared_faces / "identities/obama/1.jpg"), "--steps", "1"]
    argv += ["--height", "64", "--output", str(tmp_path), "-q", "--no-progress"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [f"wrote {tmp_path}/dynamicid_0.png", f"wrote {tmp_path}/dynamicid_0.json"]


def test_counts_agree_with_their_nouns_and_types_are_named_in_words():
    from dynamicid.options import check_values, counted
    from dynamicid.training.config import AnchorConfig

    assert (counted(1, "URL"), counted(3, "URL"), counted(1, "identity", "identities")) == (
        "1 URL",
        "3 URLs",
        "1 identity",
    )
    with pytest.raises(ConfigError, match="steps must be a whole number, not 'many'"):
        check_values({"steps": "many"}, AnchorConfig, "here")
    with pytest.raises(ConfigError, match="learning_rate must be a number, not"):
        check_values({"learning_rate": "fast"}, AnchorConfig, "here")


def test_pictures_draw_no_missing_glyph_boxes():
    """Pillow's built-in font has no glyph for the dash eval prints for a missing score (and others): each is
    drawn in a plain form, never as the box a missing glyph makes."""
    import numpy as np
    from PIL import Image, ImageDraw

    from dynamicid.drawing import font
    from dynamicid.evaluation.report import _fmt

    def drawn(text: str) -> np.ndarray:
        image = Image.new("L", (200, 20))
        ImageDraw.Draw(image).text((2, 2), text, fill=255, font=font(12))
        return np.asarray(image)

    box = drawn("\ue000")  # no font has this character: its drawing is the missing-glyph box
    assert box.any()
    for text in (_fmt(None), "–", "—", "→", "×", "≥", "²", "…"):
        assert not np.array_equal(drawn(text), box), text
    assert np.array_equal(drawn(_fmt(None)), drawn("-"))


def test_a_detection_score_outside_the_detectors_range_is_refused():
    from dynamicid.faces.analyzer import FaceAnalysisConfig

    with pytest.raises(ConfigError, match="outside the insightface detector's scores, 0 to 1"):
        FaceAnalysisConfig(detector="insightface", min_detection_score=2)
    assert FaceAnalysisConfig(detector="dlib-hog", min_detection_score=2).min_detection_score == 2  # HOG margins
    assert FaceAnalysisConfig(detector="insightface", min_detection_score=0.6).min_detection_score == 0.6


def test_the_download_help_names_each_licence_plainly():
    from dynamicid.generation.cli import _download_description

    text = _download_description()
    assert "(the authors' (" not in text and "meteorite2023/DynamicID (set by the authors: see" in text


def _recipe(tmp_path, eval_split: str, prep_split: str):
    from dynamicid.recipe.recipe import read_recipe

    (tmp_path / "photos").mkdir(exist_ok=True)
    (tmp_path / "r.toml").write_text(
        f'[run]\noutput = "out"\nbase_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"\n'
        f'[prep]\ninput = "photos"\nsplit = "{prep_split}"\n[eval]\nsplit = "{eval_split}"\nweights = "w"\n'
        '[publish]\nto = "models"\n'
    )
    return read_recipe(str(tmp_path / "r.toml"))


def test_the_model_card_claims_only_what_the_run_did(tmp_path):
    import json

    from dynamicid.recipe.publish import model_card

    record = {"version": 1, "published": "today", "fingerprint": "f" * 16, "scores": {"face_sim_mean": 0.5}}
    os.makedirs(tmp_path / "out" / "dataset")
    summary = {"files": 9, "kept_faces": 8, "identities": 4, "kept_faces_by_split": {"train": 6, "test": 2}}
    (tmp_path / "out" / "dataset" / "summary.json").write_text(json.dumps(summary))
    on_train = model_card(_recipe(tmp_path, "train", "0.5,0,0.5"), record)
    assert "eval never saw" not in on_train and "its people were seen in training" in on_train
    held_out = model_card(_recipe(tmp_path, "test", "0.5,0,0.5"), record)
    assert "whose people training never saw" in held_out
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5 (CreativeML OpenRAIL-M)" in held_out
    assert "- weights: w (see the repo's model card" in held_out  # the weights eval was given, not the authors'
    assert "h94/IP-Adapter" in held_out  # the default CLIP encoder, used as none was named
    assert "## Responsible use" in held_out and "dynamicid verify IMAGE" in held_out


def test_the_run_report_has_a_date_the_gate_reasons_once_and_what_reruns(tmp_path):
    from dynamicid.recipe.report import write_report

    recipe = _recipe(tmp_path, "test", "0.5,0,0.5")
    reason = "face_sim_mean is 0.1, below 0.4"
    stages = {
        "prep": {"status": "done", "fingerprint": "abc"},
        "eval": {"status": "done"},
        "publish": {"status": "failed", "message": f"the new model is not published: {reason}", "failures": [reason]},
    }
    os.makedirs(tmp_path / "out" / "eval-champion")
    (tmp_path / "out" / "eval-champion" / "report.html").write_text("<html></html>")
    recipe.tables["gate"] = {"min_face_similarity": 0.4}
    stages["gate"] = stages.pop("publish")
    page = open(write_report(recipe, stages, {"gate": "runs: its last run failed"})).read()
    assert page.count(reason) == 1 and "runs: its last run failed" in page and "written 20" in page
    assert "eval-champion/report.html" in page


def test_text_files_that_are_not_utf8_are_named_by_line(tmp_path):
    from dynamicid.evaluation.heldout import HeldOutError, read_prompts
    from dynamicid.evaluation.inputs import EvalInputError, read_items

    (tmp_path / "prompts.txt").write_bytes("a portrait\nun café | in a happy expression\n".encode("latin-1"))
    with pytest.raises(HeldOutError, match=r"prompts file .*prompts.txt, line 2: the text is not UTF-8"):
        read_prompts(str(tmp_path / "prompts.txt"))
    (tmp_path / "list.csv").write_bytes("image,reference\nx.png,caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(EvalInputError, match=r"list.csv, line 2: the text is not UTF-8.*save it as UTF-8"):
        read_items(str(tmp_path / "list.csv"))

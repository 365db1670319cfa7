"""`dynamicid eval` on real photos: the metric separates people, matches side-by-side faces, flags
swapped references, scores a faceless image 0, and its report renders in a real browser."""

import csv
import itertools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from dynamicid.evaluation import EvalConfig, run_eval
from dynamicid.evaluation.inputs import EvalInputError, read_items
from dynamicid.evaluation.scoring import prompt_agreement
from dynamicid.responsible.provenance import read_provenance
from dynamicid.testing.tiny_models import tiny_clip


def evaluate(input_path, output, **options):
    return run_eval(EvalConfig(input=str(input_path), output=str(output), progress=False, **options))


def identity_photos(shared_faces):
    return sorted((shared_faces / "identities").rglob("*.*"))


def test_prompt_agreement_counts_only_requested_attributes():
    full = prompt_agreement(
        "in a happy expression, in side view, turned left", "in a happy expression, in side view, turned right"
    )
    assert full["side_match"] is False and full["prompt_agreement"] == pytest.approx(3 / 4)
    plain = prompt_agreement("in a neutral expression, in front view", "in a happy expression, in front view")
    assert plain["side_match"] is None and plain["prompt_agreement"] == pytest.approx(2 / 3)


def test_same_person_scores_above_different_person_for_every_pair(shared_faces, tmp_path):
    photos = identity_photos(shared_faces)
    entries = [
        {"image": str(a), "persons": [{"name": b.parent.name, "reference": str(b)}]}
        for a, b in itertools.permutations(photos, 2)
    ]
    listing = tmp_path / "pairs.json"
    listing.write_text(json.dumps(entries))
    scores = evaluate(listing, tmp_path / "out", report_columns=8).scores
    assert len(scores) == 16 * 15 and scores.face_detected.all()
    same_person = scores.image.map(lambda p: os.path.basename(os.path.dirname(p))) == scores.person
    assert scores.face_sim[same_person].min() > scores.face_sim[~same_person].max()


@pytest.fixture(scope="module")
def side_by_side(shared_faces, tmp_path_factory):
    """Two real people in one image, with references from other photos of each."""
    folder = tmp_path_factory.mktemp("pair")
    left = Image.open(shared_faces / "identities/obama/1.jpg").convert("RGB")
    right = Image.open(shared_faces / "identities/rose_leslie/2.jpg").convert("RGB")
    height = 600
    left = left.resize((round(left.width * height / left.height), height))
    right = right.resize((round(right.width * height / right.height), height))
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    canvas.save(folder / "pair.jpg", quality=95)
    return folder, shared_faces / "identities/obama/2.jpg", shared_faces / "identities/rose_leslie/1.jpg"


def _sidecar(folder, persons, prompt="two people at a gala"):
    (folder / "pair.json").write_text(json.dumps({"prompt": prompt, "persons": persons}))


def test_two_faces_side_by_side_are_matched_with_a_positive_margin(side_by_side, tmp_path):
    folder, obama, rose = side_by_side
    _sidecar(folder, [{"name": "obama", "reference": str(obama)}, {"name": "rose", "reference": str(rose)}])
    scores = evaluate(folder, tmp_path).scores.set_index("person")
    assert scores.face_detected.all() and (scores.faces_in_image == 2).all()
    assert scores.loc["obama", "box"][0] < scores.loc["rose", "box"][0]  # obama was pasted on the left
    assert (scores.leak_margin > 0).all()
    assert scores.min_face_sim.iloc[0] == pytest.approx(scores.face_sim.min())


def test_swapped_references_give_a_negative_margin(side_by_side, tmp_path):
    folder, obama, rose = side_by_side
    boxes = {"obama": [0.0, 0.0, 0.5, 1.0], "rose": [0.5, 0.0, 1.0, 1.0]}  # obama was pasted on the left
    _sidecar(
        folder,
        [
            {"name": "obama", "reference": str(obama), "box": boxes["obama"]},
            {"name": "rose", "reference": str(rose), "box": boxes["rose"]},
        ],
    )
    placed = evaluate(folder, tmp_path / "placed").scores
    assert (placed.matched_by == "box").all() and (placed.leak_margin > 0).all()
    # Now each person names the other's photo as reference, while asking for the same places.
    _sidecar(
        folder,
        [
            {"name": "obama", "reference": str(rose), "box": boxes["obama"]},
            {"name": "rose", "reference": str(obama), "box": boxes["rose"]},
        ],
    )
    swapped = evaluate(folder, tmp_path / "swapped")
    scores = swapped.scores
    assert (scores.matched_by == "box").all()
    assert (scores.leak_margin < 0).all()
    assert (scores.face_sim < placed.face_sim.min()).all()
    assert (placed.outcome == "ok").all() and (scores.outcome == "swapped").all()
    assert swapped.summary["image_outcomes"]["swapped"] == 1 and swapped.summary["swapped_share"] == 1.0


def test_matching_without_boxes_follows_similarity(side_by_side, tmp_path):
    folder, obama, rose = side_by_side
    _sidecar(folder, [{"name": "obama", "reference": str(rose)}, {"name": "rose", "reference": str(obama)}])
    scores = evaluate(folder, tmp_path).scores
    assert (scores.matched_by == "similarity").all() and (scores.leak_margin > 0).all()


def test_an_image_without_a_face_scores_zero_and_counts_as_missed(shared_faces, tmp_path):
    from skimage import data

    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "person", "reference", "face_prompt", "prompt"])
        writer.writerow(
            [
                "coffee.png",
                "obama",
                str(shared_faces / "identities/obama/1.jpg"),
                "in a happy expression, in front view",
                "a cup",
            ]
        )
        writer.writerow(
            [
                str(shared_faces / "identities/obama/2.jpg"),
                "obama",
                str(shared_faces / "identities/obama/1.jpg"),
                "",
                "",
            ]
        )
    result = evaluate(tmp_path / "list.csv", tmp_path / "out")
    scores = result.scores.set_index(result.scores.image.map(os.path.basename))
    assert scores.loc["coffee.png", "face_sim"] == 0.0 and not scores.loc["coffee.png", "face_detected"]
    assert scores.loc["2.jpg", "face_detected"]
    assert result.summary["detection_rate"] == 0.5


def test_mirrored_photos_flip_the_requested_side(shared_faces, tmp_path):
    photo = shared_faces / "identities/obama/4.jpg"  # turned to the viewer's right
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirrored.jpg")
    asked = "in a neutral expression, in side view, turned right"
    entries = [
        {"image": str(photo), "persons": [{"name": "obama", "reference": str(photo), "face_prompt": asked}]},
        {
            "image": str(tmp_path / "mirrored.jpg"),
            "persons": [{"name": "obama", "reference": str(photo), "face_prompt": asked}],
        },
    ]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    scores = evaluate(tmp_path / "list.json", tmp_path / "out").scores
    original, mirrored = scores.iloc[0], scores.iloc[1]
    assert original.side_match and not mirrored.side_match
    assert original.measured_face_prompt.endswith("turned right") and mirrored.measured_face_prompt.endswith(
        "turned left"
    )
    assert original.prompt_agreement > mirrored.prompt_agreement


def test_bad_inputs_are_named(tmp_path, shared_faces):
    with pytest.raises(EvalInputError, match="input not found"):
        read_items(str(tmp_path / "missing.csv"))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(EvalInputError, match="has no sidecar a.json"):
        read_items(str(tmp_path))
    (tmp_path / "bad.csv").write_text("picture,who\nx,y\n")
    with pytest.raises(EvalInputError, match="missing column"):
        read_items(str(tmp_path / "bad.csv"))
    (tmp_path / "l.json").write_text(json.dumps([{"image": "nope.png", "persons": [{"reference": "r.jpg"}]}]))
    with pytest.raises(EvalInputError, match="file not found"):
        read_items(str(tmp_path / "l.json"))
    from skimage import data

    Image.fromarray(data.coffee()).save(tmp_path / "cup.png")
    (tmp_path / "r.json").write_text(
        json.dumps(
            [
                {
                    "image": str(shared_faces / "identities/obama/1.jpg"),
                    "persons": [{"reference": str(tmp_path / "cup.png")}],
                }
            ]
        )
    )
    with pytest.raises(EvalInputError, match="reference photo .*cup.png: no face"):
        evaluate(tmp_path / "r.json", tmp_path / "out")


def test_clip_t_from_a_local_model_folder(side_by_side, tmp_path):
    folder, obama, rose = side_by_side
    _sidecar(folder, [{"name": "obama", "reference": str(obama)}, {"name": "rose", "reference": str(rose)}])
    clip_dir = tmp_path / "clip"
    tiny_clip(str(clip_dir))
    result = evaluate(folder, tmp_path / "out", clip_model=str(clip_dir))
    values = result.scores.clip_t
    assert values.notna().all() and values.between(-1, 1).all()
    assert result.summary["clip_t_mean"] == pytest.approx(float(values.iloc[0]), abs=1e-4)
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        evaluate(folder, tmp_path / "out2", clip_model=str(tmp_path / "nowhere"))


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium: `apt-get install chromium` (make test installs it where it can)")


def test_report_renders_in_headless_chromium(side_by_side, tmp_path):
    folder, obama, rose = side_by_side
    _sidecar(
        folder,
        [
            {"name": "obama", "reference": str(obama), "face_prompt": "in a happy expression, in front view"},
            {"name": "rose", "reference": str(rose)},
        ],
    )
    result = evaluate(folder, tmp_path / "out")
    page = open(result.report_html).read()
    for src in ("thumbs/00000.jpg", "thumbs/00000_face0.jpg", "thumbs/00000_ref1.jpg", "<svg"):
        assert src in page
    # Real photos pasted side by side, not generated here: their thumbnail claims no generated source.
    assert read_provenance(str(tmp_path / "out" / "thumbs" / "00000.jpg")) is None
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            "file://" + result.report_html,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.std() > 25  # not a blank page
    # The photo was drawn: many saturated, non-grey pixels, which the page's own white/grey styling has none of.
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 40
    assert colourful.mean() > 0.02
    grid = Image.open(result.report_png)
    assert grid.width >= 1000 and np.asarray(grid).std() > 20


def test_the_real_photo_check_reports_mirror_agreement_of_face_prompts(shared_faces, tmp_path):
    """eval --mirror-check on the 16 identity photos, each against itself: a face and its mirror image must
    get the same emotion, tilt and view and the opposite side. The share that do is reported."""
    entries = [
        {"image": str(p), "persons": [{"name": p.parent.name, "reference": str(p)}]}
        for p in identity_photos(shared_faces)
    ]
    (tmp_path / "photos.json").write_text(json.dumps(entries))
    result = evaluate(tmp_path / "photos.json", tmp_path / "out", mirror_check=True)
    scores = result.scores
    assert scores.mirror_face_prompt.notna().all()
    assert result.summary["mirror_consistency"] == round(float(scores.mirror_consistent.mean()), 4)
    assert result.summary["mirror_consistency"] >= 0.9, scores[~scores.mirror_consistent][
        ["image", "measured_face_prompt", "mirror_face_prompt"]
    ]
    turned = scores[scores.measured_face_prompt.str.endswith("turned right")]
    assert len(turned) and turned.mirror_face_prompt.str.endswith("turned left").all()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mirror_consistency"] >= 0.9


def test_eval_analyses_faces_as_the_sidecars_record_unless_told_otherwise():
    from dynamicid.evaluation.config import EvalConfig
    from dynamicid.evaluation.inputs import EvalItem
    from dynamicid.evaluation.runner import _face_analysis
    from dynamicid.faces import FaceAnalysisConfig

    recorded = {"embedder": "dlib-resnet-native", "detect_side": 640}
    items = [EvalItem("a.png", face_analysis=recorded), EvalItem("b.png", face_analysis=dict(recorded))]
    chosen = _face_analysis(EvalConfig(input="i", output="o"), items)
    assert (chosen.embedder, chosen.detect_side) == ("dlib-resnet-native", 640)
    asked = FaceAnalysisConfig(detect_side=320)
    assert _face_analysis(EvalConfig(input="i", output="o", faces=asked), items) == asked
    mixed = [*items, EvalItem("c.png", face_analysis={"embedder": "insightface"})]
    assert _face_analysis(EvalConfig(input="i", output="o"), mixed) == FaceAnalysisConfig()


def test_eval_reports_outcomes_and_the_fields_figures_on_composites(analyzer, shared_faces, tmp_path):
    """Composites of real photos (issue 38 §3) scored from an eval list with ground-truth photos: every case
    gets its outcome, the summary counts them, the report shows them and the gate can bound them."""
    from dynamicid.recipe.gate import check_bounds
    from dynamicid.testing.composites import aligned_face, canvas, morph

    root = shared_faces / "identities"
    a1, b1 = aligned_face(analyzer, str(root / "obama/1.jpg")), aligned_face(analyzer, str(root / "biden/1.jpg"))
    a3 = aligned_face(analyzer, str(root / "obama/3.jpg"))
    cases = {"right": [a1, b1], "swapped": [b1, a1], "blend": [morph(a1, b1), b1], "pasted": [a3, b1]}
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "person", "reference", "ground_truth", "prompt", "box"])
        for name, tiles in cases.items():
            image, boxes = canvas(tiles)
            Image.fromarray(image).save(tmp_path / f"{name}.png")
            for person, (reference, truth), box in zip(
                ("obama", "biden"), [("obama/3.jpg", "obama/2.jpg"), ("biden/2.jpg", "biden/1.jpg")], boxes
            ):
                writer.writerow(
                    [f"{name}.png", person, root / reference, root / truth, "two people", " ".join(map(str, box))]
                )
    result = evaluate(tmp_path / "list.csv", tmp_path / "out")
    outcomes = result.scores.groupby("image").image_outcome.first().rename(lambda p: os.path.basename(p)[:-4])
    assert outcomes.to_dict() == {"right": "ok", "swapped": "swapped", "blend": "blended", "pasted": "ok"}
    by = result.scores.assign(case=result.scores.image.map(lambda p: os.path.basename(p)[:-4])).set_index(
        ["case", "person"]
    )
    assert by.loc[("pasted", "obama"), "copy_paste"] > 0.7 > by.loc[("right", "obama"), "copy_paste"]
    assert by.loc[("right", "obama"), "sim_gt"] > by.loc[("swapped", "obama"), "sim_gt"]
    assert by.loc[("blend", "obama"), "looks_like"] == "biden"
    summary = result.summary
    assert summary["image_outcomes"]["blended"] == 1 and summary["person_outcomes"]["swapped"] == 2
    assert summary["outcome_thresholds"] == "measured for this embedder"
    assert "Outcomes" in open(result.report_html).read()
    assert check_bounds({"max_swapped": 0.3, "min_sim_gt": 0.5}, summary) == []
    failed = check_bounds({"max_swapped": 0.2, "max_copy_paste": -1.0}, summary)
    assert len(failed) == 2 and "swapped_share is 0.2500, above 0.2" in failed[0]

"""The identity outcome classifier (issue 38 §1, §3) on composites of real photos from ../shared/faces: each
case a multi-person generation can fail in, made with faces whose owners are known, must be classified
right, and Sim(Ref), Sim(GT), CP and ID-Conf must move the right way."""

import numpy as np
import pytest

from dynamicid.faces.identity_check import (
    CheckThresholds,
    check_faces,
    check_identities,
    check_thresholds,
    copy_paste,
    id_conf,
    unit_rows,
)
from dynamicid.testing.composites import aligned_face, canvas, morph

PEOPLE = {"a": "obama", "b": "kit_harington"}


@pytest.fixture(scope="module")
def faces(analyzer, shared_faces):
    root = shared_faces / "identities"
    photos = {
        "a1": "obama/1.jpg",
        "a2": "obama/2.jpg",
        "a_ref": "obama/3.jpg",
        "b1": "kit_harington/1.jpeg",
        "b2": "kit_harington/2.jpeg",
        "b_ref": "kit_harington/3.jpg",
        "stranger": "lin_manuel_miranda/1.png",
    }
    return {name: aligned_face(analyzer, str(root / path)) for name, path in photos.items()}


def _embedding(analyzer, aligned: np.ndarray) -> np.ndarray:
    image, _ = canvas([aligned])
    return analyzer.analyze(image)[0].embedding


def _check(analyzer, faces, tiles, boxed=True, truths=None, references=("a_ref", "b_ref")):
    image, boxes = canvas([faces[name] if name else None for name in tiles])
    found = analyzer.analyze(image)
    refs = np.stack([_embedding(analyzer, faces[name]) for name in references])
    person_boxes = [boxes[i] if boxed else None for i in range(len(references))]
    truth = [unit_rows(_embedding(analyzer, faces[name])) for name in truths] if truths else None
    height, width = image.shape[:2]
    return check_faces(found, (width, height), refs, person_boxes, check_thresholds("dlib-resnet"), truth)


@pytest.mark.parametrize(
    "tiles, boxed, persons, image",
    [
        (["a1", "b1"], True, ["ok", "ok"], "ok"),
        (["a1", "b1"], False, ["ok", "ok"], "ok"),
        (["b1", "a1"], True, ["swapped", "swapped"], "swapped"),
        (["a1", "a2"], True, ["duplicate", "duplicate"], "duplicate"),
        (["a1", "a2"], False, ["duplicate", "duplicate"], "duplicate"),
        (["a1", None], True, ["ok", "missing"], "missing"),
        (["a1", "stranger"], True, ["ok", "missing"], "missing"),
        (["a1", "b1", "stranger"], True, ["ok", "ok"], "extra_face"),
        (["blend", "b1"], True, ["blended", "ok"], "blended"),
    ],
    ids=[
        "correct",
        "correct-no-boxes",
        "swapped",
        "one-person-twice",
        "twice-no-boxes",
        "one-missing",
        "a-stranger-in-a-box",
        "extra-stranger",
        "blend",
    ],
)
def test_each_composite_is_classified_right(analyzer, faces, tiles, boxed, persons, image):
    faces = faces | {"blend": morph(faces["a1"], faces["b1"])}
    checked = _check(analyzer, faces, tiles, boxed)
    assert [item.outcome for item in checked.persons] == persons
    assert checked.outcome == image and checked.passed == (image in ("ok", "extra_face"))


def test_the_figures_move_the_right_way(analyzer, faces):
    right = _check(analyzer, faces, ["a1", "b1"])
    swapped = _check(analyzer, faces, ["b1", "a1"])
    assert min(p.sim_ref for p in right.persons) > max(p.sim_ref for p in swapped.persons)
    assert min(p.id_conf for p in right.persons) > 0.05  # each person's face well ahead of the other's
    blended = _check(analyzer, faces | {"blend": morph(faces["a1"], faces["b1"])}, ["blend", "b1"])
    assert blended.persons[0].id_conf < right.persons[0].id_conf
    # Copy-paste: the reference photo itself pasted, against another photo of the person.
    pasted = _check(analyzer, faces, ["a_ref", "b_ref"], truths=["a2", "b2"])
    natural = _check(analyzer, faces, ["a1", "b1"], truths=["a2", "b2"])
    for copied, fresh in zip(pasted.persons, natural.persons):
        assert copied.copy_paste > 0.7 and copied.sim_ref > 0.99  # the reference's own face
        assert copied.copy_paste > fresh.copy_paste + 0.4
        assert fresh.sim_gt is not None and copied.sim_gt is not None


def test_copy_paste_is_one_at_the_reference_and_minus_one_at_the_other_photo():
    reference, truth = unit_rows([1.0, 0.0, 0.0]), unit_rows([0.0, 1.0, 0.0])
    assert copy_paste(reference, reference, truth) == pytest.approx(1.0, abs=1e-4)
    assert copy_paste(truth, reference, truth) == pytest.approx(-1.0, abs=1e-4)
    assert copy_paste(unit_rows([1.0, 1.0, 0.0]), reference, truth) == pytest.approx(0.0, abs=1e-4)


def test_id_conf_is_umos_relative_margin():
    assert id_conf(np.array([0.45, 0.9])) == pytest.approx(0.5)
    assert id_conf(np.array([0.9])) is None  # one face: nothing to be confused with
    assert id_conf(np.array([-0.2, -0.1])) == 0.0 and id_conf(np.array([0.9, -0.9])) == 1.0


def test_boxes_constrain_the_matching_and_no_face_is_missing():
    thresholds = CheckThresholds("test", same_person=0.9, blend_top=0.88, blend_floor=0.85, blend_margin=0.02)
    similarity = np.array([[0.95, 0.2], [0.3, 0.96]])
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    face_boxes = [(0.6, 0.1, 0.9, 0.5), (0.1, 0.1, 0.4, 0.5)]  # A's face sits in B's box and B's in A's
    checked = check_identities(similarity, [left, right], face_boxes, thresholds)
    assert [p.outcome for p in checked.persons] == ["swapped", "swapped"] and checked.persons[0].face == 1
    empty = check_identities(np.zeros((2, 0)), [None, None], [], thresholds)
    assert [p.outcome for p in empty.persons] == ["missing", "missing"] and empty.persons[0].id_conf is None


# -- the check at generation (issue 38 §2) ------------------------------------------------------------------


def test_the_pipeline_retries_seeds_until_the_faces_are_right(tiny_pipe, faces, shared_faces, monkeypatch):
    """The tiny models draw noise, so the decoder is replaced by one that returns, per try, a composite of real
    faces: first the persons swapped, then in their places. The real face analysis judges them."""
    from PIL import Image

    from dynamicid.generation.request import Person

    swapped, boxes = canvas([faces["b1"], faces["a1"]])
    right, _ = canvas([faces["a1"], faces["b1"]])
    drawn = iter([swapped, right])
    monkeypatch.setattr(tiny_pipe, "_decode", lambda latents, output_type, generator: [Image.fromarray(next(drawn))])
    root = shared_faces / "identities"
    persons = [
        Person(str(root / "obama/3.jpg"), box=tuple(boxes[0])),
        Person(str(root / "kit_harington/3.jpg"), box=tuple(boxes[1])),
    ]
    out = tiny_pipe(
        "two people",
        persons,
        num_inference_steps=1,
        height=64,
        width=128,
        seed=7,
        check_identities=True,
        retries=3,
        watermark=False,
    )
    record = out.metadata["identity_check"]
    assert [t["seed"] for t in record["tries"]] == [7, 8]  # stopped at the first that passed
    assert [t["outcomes"][0]["outcome"] for t in record["tries"]] == ["swapped", "ok"]
    assert record["passed"] and record["kept_seed"] == 8 and out.metadata["seed"] == 8
    assert np.array_equal(np.asarray(out.images[0]), right)


def test_generate_records_every_try_and_says_when_none_passed(tiny_models, shared_faces, tmp_path, capsys):
    import json

    from test_generate import _small_generate

    out = tmp_path / "gen"
    assert _small_generate(tiny_models, shared_faces, out, "--check-identities", "--retries", "2", "--seed", "3") == 0
    record = json.loads((out / "dynamicid_0.json").read_text())["identity_check"]
    assert [t["seed"] for t in record["tries"]] == [3, 4, 5] and not record["passed"]  # noise has no face
    assert all(t["outcomes"][0]["persons"][0]["outcome"] == "missing" for t in record["tries"])
    printed = capsys.readouterr().out
    assert "image 0: missing (person 1 missing)" in printed and "NOT passed" in printed and "after 3 tries" in printed


def test_serve_checks_by_default_and_its_status_says_each_persons_outcome(tiny_pipe, shared_faces):
    from dynamicid.generation.request import Settings
    from dynamicid.serving.app import _identities_said
    from dynamicid.serving.config import ServeConfig
    from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest

    assert ServeConfig().check_identities and ServeConfig().retries == 2
    engine = Engine(tiny_pipe, check_identities=True, retries=1)
    photo = str(shared_faces / "identities/obama/1.jpg")
    request = GenerationRequest("a portrait", [PersonRequest(photo)], Settings(steps=1, height=64, width=64, seed=5))
    sidecar = engine.generate(request).sidecars[0]
    assert len(sidecar["identity_check"]["tries"]) == 2  # the API returns this sidecar
    said = _identities_said(sidecar)
    assert "person 1 missing" in said and "after 2 tries" in said

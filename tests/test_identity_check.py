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


def test_boxes_constrain_the_matching_and_no_face_is_missing():
    thresholds = CheckThresholds("test", same_person=0.9, blend_top=0.88, blend_floor=0.85, blend_margin=0.02)
    similarity = np.array([[0.95, 0.2], [0.3, 0.96]])
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    face_boxes = [(0.6, 0.1, 0.9, 0.5), (0.1, 0.1, 0.4, 0.5)]  # A's face sits in B's box and B's in A's
    checked = check_identities(similarity, [left, right], face_boxes, thresholds)
    assert [p.outcome for p in checked.persons] == ["swapped", "swapped"] and checked.persons[0].face == 1
    empty = check_identities(np.zeros((2, 0)), [None, None], [], thresholds)
    assert [p.outcome for p in empty.persons] == ["missing", "missing"] and empty.persons[0].id_conf is None

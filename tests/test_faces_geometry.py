"""Alignment, landmark images, pose and face prompts: pure functions, checked against formulas."""

import math

import numpy as np
import pytest

from dynamicid.faces import alignment, face_prompt, landmark_image, pose
from dynamicid.faces.types import HeadPose


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = math.radians(23), 1.7, np.array([12.0, -4.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = scale * points @ rotation.T + shift
    matrix = alignment.similarity_transform(points, moved)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(alignment.apply_affine(matrix, points), moved, atol=1e-4)


def test_similarity_transform_never_reflects():
    points = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], dtype=float)
    mirrored = points * np.array([-1, 1])
    matrix = alignment.similarity_transform(points, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        alignment.similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))


def test_five_points_from_ibug68_uses_eye_centres_nose_and_mouth_corners():
    landmarks = np.arange(136, dtype=float).reshape(68, 2)
    five = alignment.five_points(landmarks, "ibug68")
    np.testing.assert_allclose(five[0], landmarks[36:42].mean(0))
    np.testing.assert_allclose(five[1], landmarks[42:48].mean(0))
    np.testing.assert_allclose(five[2:], landmarks[[30, 48, 54]])
    with pytest.raises(ValueError, match="no five-point mapping"):
        alignment.five_points(landmarks, "unknown")


def test_alignment_puts_the_five_points_on_the_template():
    template = alignment.ALIGN_TEMPLATE_UNIT * 512
    landmarks = np.zeros((68, 2))
    # Build landmarks whose five points are the template turned and shrunk; alignment must undo it.
    angle = math.radians(-15)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = (template - 256) @ rotation.T * 0.4 + [300, 200]
    landmarks[36:42] = source[0]
    landmarks[42:48] = source[1]
    landmarks[[30, 48, 54]] = source[2:]
    matrix = alignment.alignment_matrix(landmarks, "ibug68", 512)
    np.testing.assert_allclose(alignment.apply_affine(matrix, source), template, atol=1e-3)


def test_map96_follows_the_single_pixel_convention():
    points = np.array([[0.0, 0.0], [511.0, 511.0], [256.0, 100.0], [600.0, 10.0], [-3.0, 40.0]])
    canvas = landmark_image.render_map96(points)
    assert canvas.shape == (96, 96) and canvas.dtype == np.uint8
    expected = {(0, 0), (95, 95), (18, 48)}  # (row, col) = floor(p * 96 / 512); outside points skipped
    assert {tuple(rc) for rc in np.argwhere(canvas == 255)} == expected
    assert set(np.unique(canvas)) == {0, 255}


def test_landmark_sheet_layout_round_trips():
    points = np.random.default_rng(1).uniform(20, 490, size=(68, 2))
    sheet = landmark_image.compose_landmark_png(points, "ibug68")
    assert sheet.shape == (512, 608)
    drawing, map96 = landmark_image.split_landmark_png(sheet)
    np.testing.assert_array_equal(map96, landmark_image.render_map96(points))
    assert drawing.max() == 255 and sheet[96:, 512:].max() == 0
    with pytest.raises(ValueError, match="not a dynamicid landmark sheet"):
        landmark_image.split_landmark_png(np.zeros((512, 512), np.uint8))


def _project(yaw: float, pitch: float) -> np.ndarray:
    indices, model = pose.generic_face("ibug68")
    b, a = math.radians(-yaw), math.radians(-pitch)
    turn = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    camera = (turn @ tilt @ model.T).T + [0, 0, 700.0]
    landmarks = np.zeros((68, 2))
    landmarks[indices] = camera[:, :2] / camera[:, 2:] * 900 + 320
    return landmarks


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (25, 0), (-30, 0), (0, 18), (0, -18), (20, 12)])
def test_pose_recovers_the_rotation_of_a_projected_face(yaw, pitch):
    estimate = pose.estimate_pose(_project(yaw, pitch), "ibug68")
    assert estimate.yaw == pytest.approx(yaw, abs=2.5)
    assert estimate.pitch == pytest.approx(pitch, abs=2.5)


def test_mirroring_landmarks_flips_yaw_and_roll():
    points = _project(25, 5)
    mirrored = points.copy()
    mirrored[:, 0] = 1000 - mirrored[:, 0]
    # a mirror swaps left and right landmark indices
    swap = {36: 45, 45: 36, 39: 42, 42: 39, 48: 54, 54: 48, 31: 35, 35: 31}
    mirrored = np.array([mirrored[swap.get(i, i)] for i in range(68)])
    a, b = pose.estimate_pose(points, "ibug68"), pose.estimate_pose(mirrored, "ibug68")
    assert b.yaw == pytest.approx(-a.yaw, abs=0.5)
    assert b.pitch == pytest.approx(a.pitch, abs=0.5)


@pytest.mark.parametrize(
    "pitch,yaw,text",
    [
        (0, 0, "in a happy expression, in front view"),
        (15, 0, "in a happy expression, facing up, in front view"),
        (-15, 3, "in a happy expression, facing down, in front view"),
        (0, 25, "in a happy expression, in side view, turned right"),
        (11, -12, "in a happy expression, facing up, in side view, turned left"),
        (10, 9.99, "in a happy expression, in front view"),  # thresholds are strict: > 10 and < 10
    ],
)
def test_face_prompt_follows_the_method_template(pitch, yaw, text):
    prompt = face_prompt.from_measurements("happy", HeadPose(pitch=pitch, yaw=yaw, roll=0))
    assert prompt.text() == text
    assert face_prompt.parse(text) == prompt


def test_face_prompt_parse_accepts_the_plain_template_and_rejects_others():
    parsed = face_prompt.parse("in a sad expression, in side view")
    assert (parsed.emotion, parsed.view, parsed.side, parsed.tilt) == ("sad", "side", None, None)
    with pytest.raises(ValueError, match="not a face prompt"):
        face_prompt.parse("a cat on a sofa")
    with pytest.raises(ValueError, match="unknown emotion"):
        face_prompt.from_measurements("bored", HeadPose(0, 0, 0))


# -- one face-prompt rule (issue 25 §2) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normal",
    [
        ("in an angry expression", "in a anger expression, in front view"),
        ("In A Happy Expression,  In Side View, Turned Left.", "in a happy expression, in side view, turned left"),
        ("in a fear expression, facing up", "in a fear expression, facing up, in front view"),
        ("in a surprised expression, in front view, turned left", "in a surprise expression, in front view"),
    ],
)
def test_face_prompts_are_read_by_one_rule(text, normal):
    from dynamicid.faces.face_prompt import normalise

    assert normalise(text) == normal


@pytest.mark.parametrize("text", ["looking furious", "in a furious expression", "in a happy expression, winking"])
def test_a_face_prompt_outside_the_rule_is_refused_with_what_is_accepted(text):
    from dynamicid.errors import InputError
    from dynamicid.faces.face_prompt import parse

    with pytest.raises(InputError, match="is not a face prompt: a face prompt is 'in a EMOTION expression'.*disgust"):
        parse(text)

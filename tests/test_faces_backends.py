"""The dlib backend and the analyzer on real photos; backend errors."""

import numpy as np
import pytest

from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer, cosine_similarity, face_prompt
from dynamicid.faces.backends import BackendError, available, create

from conftest import load_rgb


def test_registry_lists_the_default_backends_and_names_unknown_ones():
    assert "dlib-hog" in available("detector")
    assert "dlib-resnet" in available("embedder")
    with pytest.raises(BackendError, match=r"unknown embedder backend 'nope'; available: .*dlib-resnet"):
        create("embedder", "nope")


def test_missing_model_folder_names_the_expected_file(tmp_path):
    with pytest.raises(BackendError, match=r"expected shape_predictor_68_face_landmarks.dat in .*"):
        FaceAnalyzer(FaceAnalysisConfig(landmarks_model=str(tmp_path)))
    with pytest.raises(BackendError, match="dlib_face_recognition_resnet_model_v1.dat"):
        FaceAnalyzer(FaceAnalysisConfig(embedder_model=str(tmp_path)))


def test_analyzer_on_a_real_portrait(analyzer, shared_faces):
    faces = analyzer.analyze(load_rgb(shared_faces / "identities/obama/1.jpg"))
    assert len(faces) == 1
    face = faces[0]
    assert face.aligned.shape == (512, 512, 3)
    assert face.landmarks.shape == (68, 2) and face.landmark_convention == "ibug68"
    assert face.embedding.shape == (128,)
    # A broad frontal smile, in the photo and in the measurement.
    assert face.emotion == "happy"
    assert abs(face.pose.yaw) < 10 and abs(face.pose.pitch) < 10
    assert face.face_prompt == "in a happy expression, in front view"
    # The eyes land where the template puts them.
    eyes = np.stack([face.aligned_landmarks[36:42].mean(0), face.aligned_landmarks[42:48].mean(0)])
    np.testing.assert_allclose(eyes, [[192, 220], [320, 220]], atol=12)


def test_unsmiling_face_is_not_called_happy(analyzer, shared_faces):
    from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer

    rgb = load_rgb(shared_faces / "identities/kit_harington/3.jpg")
    face = analyzer.analyze(rgb, max_faces=1)[0]
    assert face.emotion != "happy" and face.emotion_probabilities[3] < 0.05  # the classifier's happy
    geometry = FaceAnalyzer(FaceAnalysisConfig(expression="landmarks"), with_embedder=False)
    assert geometry.analyze(rgb, max_faces=1, embed=False)[0].emotion == "neutral"  # landmark cues: no smile


@pytest.mark.parametrize("photo", ["identities/obama/4.jpg", "identities/kit_harington/2.jpeg", "hard/32bit_rgba.png"])
def test_mirroring_a_real_photo_flips_the_side_view_direction(analyzer, shared_faces, photo):
    rgb = load_rgb(shared_faces / photo)
    original = analyzer.analyze(rgb, max_faces=1, embed=False)[0]
    mirrored = analyzer.analyze(np.ascontiguousarray(rgb[:, ::-1]), max_faces=1, embed=False)[0]
    a, b = face_prompt.parse(original.face_prompt), face_prompt.parse(mirrored.face_prompt)
    assert a.view == b.view == "side"
    assert {a.side, b.side} == {"left", "right"}
    assert mirrored.pose.yaw == pytest.approx(-original.pose.yaw, abs=6)


def test_embeddings_separate_people(analyzer, shared_faces):
    first = analyzer.analyze(load_rgb(shared_faces / "identities/obama/1.jpg"), 1)[0].embedding
    same = analyzer.analyze(load_rgb(shared_faces / "identities/obama/2.jpg"), 1)[0].embedding
    other = analyzer.analyze(load_rgb(shared_faces / "identities/biden/1.jpg"), 1)[0].embedding
    assert np.linalg.norm(first - same) < 0.6 < np.linalg.norm(first - other)
    assert cosine_similarity(first, same) > cosine_similarity(first, other)


def test_detector_threshold_drops_weak_hits(sample):
    from dynamicid.faces.backends.dlib_backend import DlibHogDetector

    folder, _ = sample
    rgb = load_rgb(folder / "astronaut/mirrored.jpg")  # the mission patch is a weak false hit
    assert len(DlibHogDetector(min_score=0.0).detect(rgb)) == 2
    assert len(DlibHogDetector().detect(rgb)) == 1

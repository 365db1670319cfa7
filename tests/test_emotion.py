"""The expression classifier: the PyTorch port against the original Keras model, the rule from
probabilities to the face prompt, and its use in face analysis and prep."""

from pathlib import Path

import numpy as np
import pytest
from conftest import load_rgb

from dynamicid.faces import face_prompt
from dynamicid.faces.emotion import (
    EMOTION_ORDER,
    KERAS_CLASSES,
    MIN_CONFIDENCE,
    ExpressionClassifier,
    emotion_from_probabilities,
)
from dynamicid.faces.types import HeadPose

FIXTURE = Path(__file__).parent / "data" / "fer_fixture.npz"


@pytest.fixture(scope="module")
def classifier():
    return ExpressionClassifier()


@pytest.fixture(scope="module")
def fixture():
    """Our classifier inputs for the identity photos, their mirrors and the astronaut, with the Keras
    model's probabilities recorded by tools/record_fer_fixture.py (TensorFlow, the original HDF5)."""
    stored = np.load(FIXTURE)
    inputs = [(face.astype(np.float32) / 255.0 - 0.5) * 2.0 for face in stored["faces"]]
    return list(stored["names"]), inputs, stored["keras_probabilities"]


def test_the_port_equals_the_keras_model(classifier, fixture):
    names, inputs, keras = fixture
    assert len(names) == 34 and keras.shape == (34, 7)
    ours = classifier.raw_probabilities(inputs)
    np.testing.assert_allclose(ours, keras, atol=1e-4, rtol=0)
    assert (ours.argmax(1) == keras.argmax(1)).all()  # the same top class on every test face
    assert len(set(keras.argmax(1))) >= 4  # the faces exercise several classes, not one


def test_batches_and_single_faces_agree(classifier, fixture):
    _, inputs, _ = fixture
    together = classifier.raw_probabilities(inputs)
    alone = np.concatenate([classifier.raw_probabilities([x]) for x in inputs[:5]])
    np.testing.assert_allclose(together[:5], alone, atol=1e-6)


def test_the_classes_keep_the_models_order_in_the_methods_words():
    assert KERAS_CLASSES[0] == "angry" and EMOTION_ORDER[0] == "anger"
    assert set(EMOTION_ORDER) == set(face_prompt.EMOTIONS)


@pytest.mark.parametrize("word", EMOTION_ORDER)
def test_every_emotion_can_reach_the_face_prompt(word):
    probabilities = np.full(7, (1 - 0.7) / 6)
    probabilities[EMOTION_ORDER.index(word)] = 0.7
    emotion = emotion_from_probabilities(probabilities)
    assert emotion == word
    text = face_prompt.from_measurements(emotion, HeadPose(0.0, 0.0, 0.0)).text()
    assert text == f"in a {word} expression, in front view"
    assert face_prompt.parse(text).emotion == word


def test_below_the_confidence_rule_the_prompt_says_neutral():
    unsure = np.array([0.35, 0.05, 0.1, 0.2, 0.1, 0.1, 0.1])  # anger on top, but under MIN_CONFIDENCE
    assert unsure.max() < MIN_CONFIDENCE and emotion_from_probabilities(unsure) == "neutral"
    assert emotion_from_probabilities(unsure, min_confidence=0.3) == "anger"


def test_the_smiling_astronaut_is_happy_and_mirrors_agree(analyzer, shared_faces):
    from skimage import data

    photos = {"astronaut": data.astronaut()}
    photos |= {f"{p.parent.name}/{p.name}": load_rgb(p) for p in sorted((shared_faces / "identities").glob("*/*"))}
    for name, rgb in photos.items():
        face = analyzer.analyze(rgb, max_faces=1, embed=False)[0]
        mirrored = analyzer.analyze(np.ascontiguousarray(rgb[:, ::-1]), max_faces=1, embed=False)[0]
        assert face.emotion == mirrored.emotion, (name, face.emotion_probabilities, mirrored.emotion_probabilities)
        assert face.emotion_probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        if name == "astronaut":
            assert face.emotion == "happy" and face.emotion_probabilities[EMOTION_ORDER.index("happy")] > 0.9


def test_prep_writes_the_probabilities_and_the_model(sample, tmp_path):
    from conftest import prep_in_process

    from dynamicid.prep import PrepConfig

    folder, _ = sample
    manifest = prep_in_process(PrepConfig(input=str(folder), output=str(tmp_path / "out"), progress=False))
    kept = manifest[manifest.status == "ok"]
    assert len(kept) >= 1
    columns = [f"emotion_{word}" for word in EMOTION_ORDER]
    np.testing.assert_allclose(kept[columns].sum(axis=1), 1.0, atol=1e-5)
    assert kept.expression_model.str.match(r"fer-mini-xception:[0-9a-f]{12}$").all()
    for row in kept.itertuples():
        assert row.emotion == emotion_from_probabilities([getattr(row, c) for c in columns])
        assert row.face_prompt.startswith(f"in a {row.emotion} expression")
        caption = (tmp_path / "out" / "images" / row.identity / f"{row.name}.txt").read_text()
        assert row.face_prompt in caption


def test_the_channels_last_layout_gives_the_default_layouts_probabilities(classifier, fixture):
    """The classifier runs channels-last, for speed; the probabilities are those of the plain layout."""
    import copy

    import torch

    _, inputs, _ = fixture
    assert classifier.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(classifier.model).to(memory_format=torch.contiguous_format)
    assert plain.conv1.weight.is_contiguous()
    with torch.no_grad():
        expected = plain(torch.from_numpy(np.stack(inputs)[:, None])).numpy()
    # Two kernel paths: their float32 sums differ by ~1e-7, and by more on some CPUs.
    np.testing.assert_allclose(classifier.raw_probabilities(inputs), expected, atol=1e-5, rtol=0)

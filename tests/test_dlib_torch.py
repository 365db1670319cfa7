"""dlib's face ResNet read from its own file and run in PyTorch: the same embeddings as dlib's code."""

import numpy as np
import pytest
from conftest import load_rgb

from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer
from dynamicid.faces.backends import BackendError
from dynamicid.faces.backends.dlib_backend import _model_file
from dynamicid.faces.backends.dlib_torch import DlibResNet, read_network


@pytest.fixture(scope="module")
def both():
    return (
        FaceAnalyzer(FaceAnalysisConfig(embedder="dlib-resnet")),
        FaceAnalyzer(FaceAnalysisConfig(embedder="dlib-resnet-native")),
    )


def test_the_port_equals_dlib_on_real_photos(both, shared_faces):
    ours, native = both
    assert ours.embedder.model_id == native.embedder.model_id  # the same network: datasets stay valid
    for path in sorted((shared_faces / "identities").glob("*/*")):
        rgb = load_rgb(path)
        face = ours.analyze(rgb, max_faces=1, embed=False)[0]
        a, b = ours.embed(rgb, face), native.embed(rgb, face)
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine >= 0.9999 and np.linalg.norm(a - b) <= 0.01, (path.name, cosine)


def test_a_batch_equals_faces_one_at_a_time(both, shared_faces):
    ours, _ = both
    inputs = []
    for path in sorted((shared_faces / "identities").glob("obama/*"))[:3]:
        rgb = load_rgb(path)
        inputs.append(ours.embed_input(rgb, ours.analyze(rgb, max_faces=1, embed=False)[0]))
    together = ours.embedder.embed_prepared(inputs)
    alone = np.stack([ours.embedder.embed_prepared([x])[0] for x in inputs])
    assert together.shape == (3, 128)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_reader_finds_every_layer_and_refuses_other_files(tmp_path):
    layers = read_network(_model_file(None, "embedder"))
    assert len(layers["con"]) == 29 and len(layers["affine"]) == 29 and layers["fc"][0].shape == (256, 128)
    assert layers["con"][0][0].shape == (32, 3, 7, 7) and layers["con"][0][2] == (2, 2)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x01\x01\x0dnot_a_network" + bytes(100))
    with pytest.raises(BackendError, match="not a dlib face-recognition network"):
        read_network(str(other))
    truncated = tmp_path / "truncated.dat"
    data = open(_model_file(None, "embedder"), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="truncated or corrupt"):
        DlibResNet(read_network(str(truncated)))

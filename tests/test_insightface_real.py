"""The InsightFace backend on real weights (../shared/models/insightface-real: SCRFD-2.5G with keypoints
and EdgeFace-XS, a 512-d ArcFace-style recogniser), checked against InsightFace's own classes run beside
ours on the same photos, then end to end through prep."""

import itertools
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, load_rgb
from PIL import Image

insightface_scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
insightface_arcface = pytest.importorskip("insightface.model_zoo.arcface_onnx")

from dynamicid.faces import FaceAnalysisConfig  # noqa: E402
from dynamicid.faces.backends.insightface_backend import InsightFaceDetector, InsightFaceEmbedder  # noqa: E402

REAL = REPO.parent / "shared" / "models" / "insightface-real"


@pytest.fixture(scope="module")
def real_models():
    if not (REAL / "scrfd_2.5g_bnkps.onnx").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the real face models at {REAL} (../shared/models/README.md)")
        pytest.skip(f"real face models not found at {REAL}")
    return str(REAL)


@pytest.fixture(scope="module")
def reference(real_models):
    """InsightFace's own detector and recogniser classes on the same files."""
    detector = insightface_scrfd.SCRFD(model_file=os.path.join(real_models, "scrfd_2.5g_bnkps.onnx"))
    detector.prepare(-1)
    recogniser = insightface_arcface.ArcFaceONNX(model_file=os.path.join(real_models, "edgeface_xs_w512.onnx"))
    return detector, recogniser


def identity_photos(shared_faces):
    return sorted(p for p in (shared_faces / "identities").glob("*/*") if p.is_file())


def close_up(rgb: np.ndarray, box, fill: float) -> np.ndarray:
    """A tight crop around a face whose box spans `fill` of the crop's side (clipped at the photo's edges)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) / fill
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return np.ascontiguousarray(rgb[y0 : int(cy + side / 2), x0 : int(cx + side / 2)])


def reference_detect(detector, rgb):
    """InsightFace's classes take BGR (OpenCV order) and swap it back to RGB for the network."""
    return detector.detect(np.ascontiguousarray(rgb[..., ::-1]))


@pytest.fixture(scope="module")
def test_images(shared_faces, reference):
    """Every identity photo and two close-ups of each (the face box spanning 80% and 100% of the crop)."""
    detector, _ = reference
    images = {}
    for path in identity_photos(shared_faces):
        rgb = load_rgb(path)
        key = f"{path.parent.name}/{path.stem}"
        images[key] = rgb
        box = reference_detect(detector, rgb)[0][0]
        for fill in (0.8, 1.0):
            images[f"{key}_closeup{int(fill * 100)}"] = close_up(rgb, box, fill)
    return images


def test_same_faces_boxes_and_keypoints_as_insightface(real_models, reference, test_images):
    detector, _ = reference
    ours = InsightFaceDetector(real_models)
    for key, rgb in test_images.items():
        boxes, keypoints = reference_detect(detector, rgb)
        faces = ours.detect(rgb)
        assert len(faces) == len(boxes) >= 1, key
        np.testing.assert_allclose([[f.x0, f.y0, f.x1, f.y1] for f in faces], boxes[:, :4], atol=0.5, err_msg=key)
        np.testing.assert_allclose([f.score for f in faces], boxes[:, 4], atol=1e-5, err_msg=key)
        np.testing.assert_allclose([f.keypoints for f in faces], keypoints, atol=0.5, err_msg=key)


def test_close_ups_need_the_small_canvas(real_models, test_images):
    """The close-ups are real close-ups: a 640 px canvas alone misses most of them; ours finds them all."""
    detector = InsightFaceDetector(real_models)
    close_ups = {k: v for k, v in test_images.items() if "_closeup" in k}
    assert all(len(detector.detect(rgb)) == 1 for rgb in close_ups.values())
    detector.canvases = (640,)
    missed = [k for k, rgb in close_ups.items() if not detector.detect(rgb)]
    assert len(missed) >= len(close_ups) // 2, missed


def test_embeddings_equal_insightface_arcface_code(real_models, reference, test_images):
    detector, recogniser = reference
    ours_detector, ours = InsightFaceDetector(real_models), InsightFaceEmbedder(real_models)
    for key, rgb in test_images.items():
        face = type("Face", (), {})()
        face.kps = reference_detect(detector, rgb)[1][0]
        expected = recogniser.get(np.ascontiguousarray(rgb[..., ::-1]), face)
        expected = expected / np.linalg.norm(expected)
        got = ours.embed(rgb, None, "ibug68", ours_detector.detect(rgb)[0])
        assert float(got @ expected) >= 0.999, key


@pytest.mark.slow  # every photo through real ONNX models
def test_prep_with_real_weights_keeps_every_photo_and_separates_identities(real_models, test_images, tmp_path):
    import torch
    from conftest import prep_in_process

    from dynamicid.faces.analyzer import cosine_similarity
    from dynamicid.prep import PrepConfig

    source = tmp_path / "in"
    for key, rgb in test_images.items():
        person, stem = key.split("/")
        (source / person).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(source / person / f"{stem}.png")
        if "_closeup" not in stem:
            Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(source / person / f"{stem}_mirror.png")
    config = PrepConfig(
        input=str(source),
        output=str(tmp_path / "out"),
        progress=False,
        faces=FaceAnalysisConfig(
            detector="insightface", detector_model=real_models, embedder="insightface", embedder_model=real_models
        ),
    )
    manifest = prep_in_process(config)
    assert len(manifest) == len(test_images) + 16
    assert (manifest.status == "ok").all(), manifest.loc[
        manifest.status != "ok", ["relative_path", "reason", "message"]
    ]
    assert manifest.embedding_model.str.startswith("arcface:edgeface_xs_w512.onnx:").all()

    rows = manifest[~manifest.relative_path.str.contains("_mirror")]
    vectors = {
        r.relative_path: torch.load(tmp_path / "out" / "images" / r.identity / f"{r.name}.pt", weights_only=True)[
            "embedding"
        ].numpy()
        for r in rows.itertuples()
    }
    identity = dict(zip(rows.relative_path, rows.identity))
    same, different = [], []
    for a, b in itertools.combinations(vectors, 2):
        (same if identity[a] == identity[b] else different).append(cosine_similarity(vectors[a], vectors[b]))
    assert min(same) > max(different), (min(same), max(different))

    yaw = dict(zip(manifest.relative_path, manifest.yaw))
    checked = 0
    for path, value in yaw.items():
        if "_mirror" in path or "_closeup" in path or abs(value) <= 5:
            continue
        mirrored = yaw[path.rsplit(".", 1)[0] + "_mirror.png"]
        assert np.sign(mirrored) == -np.sign(value), (path, value, mirrored)
        checked += 1
    assert checked >= 5


def test_the_real_folder_is_recognised_by_signature(real_models, tmp_path):
    """File names do not matter: renamed copies are found by their inputs and outputs."""
    from dynamicid.faces.backends.insightface_backend import find_models

    renamed = tmp_path / "pack"
    renamed.mkdir()
    shutil.copy(REAL / "scrfd_2.5g_bnkps.onnx", renamed / "a.onnx")
    shutil.copy(REAL / "edgeface_xs_w512.onnx", renamed / "b.onnx")
    roles = find_models(str(renamed))
    assert {role: os.path.basename(path) for role, path in roles.items()} == {
        "detector": "a.onnx",
        "embedder": "b.onnx",
    }

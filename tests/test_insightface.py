"""InsightFace backends on tiny ONNX graphs with buffalo_l's file names, inputs and outputs."""

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from conftest import load_rgb  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer  # noqa: E402
from dynamicid.faces.backends import BackendError  # noqa: E402
from dynamicid.faces.backends.insightface_backend import (  # noqa: E402
    InsightFaceDetector,
    InsightFaceEmbedder,
    find_models,
)


def _save(path, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(
        nodes, "tiny", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


WIDTHS = {"score": 1, "obj": 1, "bbox": 4, "kps": 10}


def tiny_detector(path, strides=(8, 16, 32), kinds=("score", "bbox", "kps"), anchors=2):
    """SCRFD's outputs: `kinds` per stride, grouped by kind (9 by default). Only stride 32 fires, where the
    32x32 cell is bright; boxes reach 3 strides each way. kinds=("score", "obj", "bbox", "kps") is YuNet's layout."""
    nodes, initializers, outputs = [], {}, {kind: [] for kind in kinds}
    keypoints = np.array([-0.3, -0.2, 0.3, -0.2, 0.0, 0.0, -0.25, 0.3, 0.25, 0.3], np.float32)
    for s in strides:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]))
        for kind in kinds:
            width = WIDTHS[kind]
            channels = width * anchors
            weight = np.zeros((channels, 3, 1, 1), np.float32)
            bias = np.zeros(channels, np.float32)
            if kind in ("score", "obj"):
                weight[:] = 10.0 if s == 32 else 0.0
                bias[:] = -5.0 if s == 32 else -20.0
            elif kind == "bbox":
                bias[:] = 3.0
            else:
                bias[:] = np.tile(keypoints, anchors)
            initializers[f"w_{kind}{s}"], initializers[f"b_{kind}{s}"] = weight, bias
            nodes.append(helper.make_node("Conv", [f"pool{s}", f"w_{kind}{s}", f"b_{kind}{s}"], [f"c_{kind}{s}"]))
            source = f"c_{kind}{s}"
            if kind in ("score", "obj"):
                nodes.append(helper.make_node("Sigmoid", [source], [f"sig_{kind}{s}"]))
                source = f"sig_{kind}{s}"
            nodes.append(helper.make_node("Transpose", [source], [f"t_{kind}{s}"], perm=[0, 2, 3, 1]))
            initializers[f"shape_{kind}{s}"] = np.array([-1, width], np.int64)
            nodes.append(helper.make_node("Reshape", [f"t_{kind}{s}", f"shape_{kind}{s}"], [f"{kind}_{s}"]))
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [None, width]))
    _save(
        path,
        nodes,
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, None, None])],
        [o for kind in kinds for o in outputs[kind]],
        initializers,
    )


def tiny_head(path, input_name, side, weight, bias, raw_pixels, names=("Sub_0", "Mul_1")):
    """GlobalAveragePool -> MatMul -> Add. MXNet-style models start with nodes that normalise inside,
    named as InsightFace looks for them: `names` gives the first nodes' names (Sub/Mul, _minus/_mul, bn_data)."""
    nodes, initializers, source = [], {"w": weight.astype(np.float32), "b": bias.astype(np.float32)}, input_name
    if raw_pixels:
        initializers["mean"], initializers["scale"] = np.array(127.5, np.float32), np.array(1 / 128, np.float32)
        nodes += [
            helper.make_node("Sub", [source, "mean"], ["sub"], name=names[0]),
            helper.make_node("Mul", ["sub", "scale"], ["mul"], name=names[-1]),
        ]
        source = "mul"
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["out"]),
    ]
    _save(
        path,
        nodes,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, bias.shape[0]])],
        initializers,
    )


def crop_normalised(points, box):
    """Where InsightFace's 192 px landmark crop puts these image points, in the network's [-1, 1] output units."""
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    scale = 192 / (max(box.width, box.height) * 1.5)
    return (np.asarray(points) - centre) * scale / 96


@pytest.fixture(scope="module")
def reference_face(shared_faces):
    """dlib's box and 68 points on a real photo: the tiny 3-D landmark net will answer with them."""
    analyzer = FaceAnalyzer(with_embedder=False)
    rgb = load_rgb(shared_faces / "identities/obama/4.jpg")
    face = analyzer.analyze(rgb, max_faces=1, embed=False)[0]
    return rgb, face


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory, reference_face):
    folder = tmp_path_factory.mktemp("buffalo_l")
    rgb, face = reference_face
    tiny_detector(folder / "det_10g.onnx")
    colour = np.zeros((3, 512), np.float32)
    colour[0, 0], colour[2, 1], colour[1, 2] = 1.0, 1.0, 1.0  # out[0] = mean R, out[1] = mean B, out[2] = mean G
    tiny_head(folder / "w600k_r50.onnx", "input.1", 112, colour, np.zeros(512), raw_pixels=False)
    points106 = np.random.default_rng(0).uniform(-0.5, 0.5, (106, 2))
    tiny_head(folder / "2d106det.onnx", "data", 192, np.zeros((3, 212)), points106.reshape(-1), raw_pixels=True)
    points3d = np.zeros((1103, 3))
    points3d[-68:, :2] = crop_normalised(face.landmarks, face.box)
    tiny_head(folder / "1k3d68.onnx", "data", 192, np.zeros((3, 3309)), points3d.reshape(-1), raw_pixels=True)
    return folder


def test_models_are_recognised_by_their_signatures(buffalo, tmp_path):
    roles = find_models(str(buffalo))
    assert {k: v.rsplit("/", 1)[1] for k, v in roles.items()} == {
        "detector": "det_10g.onnx",
        "embedder": "w600k_r50.onnx",
        "landmarks2d": "2d106det.onnx",
        "landmarks3d": "1k3d68.onnx",
    }
    partial = tmp_path / "partial"
    shutil.copytree(buffalo, partial)
    (partial / "1k3d68.onnx").unlink()
    with pytest.raises(BackendError, match=r"no landmarks \(3-D\) model: expected 1k3d68.onnx"):
        FaceAnalyzer(FaceAnalysisConfig(landmarks="insightface", landmarks_model=str(partial)))
    with pytest.raises(BackendError, match="model folder not found"):
        FaceAnalyzer(FaceAnalysisConfig(embedder="insightface", embedder_model=str(tmp_path / "none")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "det_10g.onnx").write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        InsightFaceDetector(str(tmp_path / "broken"))
    with pytest.raises(BackendError, match="needs detector_model"):
        InsightFaceDetector(None)


def test_scrfd_decoding_finds_the_bright_square_with_keypoints(buffalo):
    detector = InsightFaceDetector(str(buffalo))
    image = np.zeros((1280, 1280, 3), np.uint8)
    image[640:768, 320:448] = 255  # 128 px: on the 640 canvas, cells (x 160..223, y 320..383) are bright
    faces = detector.detect(image)
    assert len(faces) == 1  # one box survives NMS
    face = faces[0]
    assert face.width == pytest.approx(2 * 192) and face.height == pytest.approx(2 * 192)  # 3 strides each way, x2 back
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    assert 320 <= cx <= 448 + 64 and 640 <= cy <= 768 + 64  # an anchor of a bright cell
    nose = face.keypoints[2]
    assert nose == pytest.approx((cx, cy))
    left_eye = face.keypoints[0]
    assert left_eye[0] == pytest.approx(cx - 0.3 * 64) and left_eye[1] == pytest.approx(cy - 0.2 * 64)
    assert detector.detect(np.zeros((300, 500, 3), np.uint8)) == []


def test_arcface_sees_rgb_normalised_and_returns_a_unit_vector(buffalo):
    embedder = InsightFaceEmbedder(str(buffalo))
    image = np.zeros((300, 300, 3), np.uint8)
    image[:] = (200, 100, 50)  # R, G, B
    five = np.array([[120, 130], [180, 130], [150, 160], [125, 190], [175, 190]], float)
    vector = embedder.embed(image, five, "five")
    assert vector.shape == (512,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    expected = np.array([(200 - 127.5) / 127.5, (50 - 127.5) / 127.5, (100 - 127.5) / 127.5])
    np.testing.assert_allclose(vector[:3], expected / np.linalg.norm(expected), atol=1e-4)


def test_mixed_backends_give_106_points_and_the_68_point_face_prompt(buffalo, reference_face):
    rgb, dlib_face = reference_face
    analyzer = FaceAnalyzer(
        FaceAnalysisConfig(
            landmarks="insightface", landmarks_model=str(buffalo), embedder="insightface", embedder_model=str(buffalo)
        )
    )
    face = analyzer.analyze(rgb, max_faces=1)[0]
    assert face.landmark_convention == "insightface106" and face.landmarks.shape == (106, 2)
    np.testing.assert_allclose(face.landmarks68, dlib_face.landmarks, atol=0.05)
    assert face.face_prompt == dlib_face.face_prompt and face.face_prompt.endswith(", in side view, turned right")
    assert face.embedding.shape == (512,)
    assert analyzer.backend_ids["embedder"].startswith("arcface:w600k_r50.onnx:")


def test_prep_records_the_backends_it_used(buffalo, shared_faces, tmp_path):
    from conftest import prep_in_process

    from dynamicid.prep import PrepConfig

    source = tmp_path / "in" / "obama"
    source.mkdir(parents=True)
    for name in ("1.jpg", "4.jpg"):
        shutil.copy(shared_faces / "identities/obama" / name, source / name)
    config = PrepConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        progress=False,
        faces=FaceAnalysisConfig(
            landmarks="insightface", landmarks_model=str(buffalo), embedder="insightface", embedder_model=str(buffalo)
        ),
    )
    manifest = prep_in_process(config)
    assert (manifest.status == "ok").all()
    assert (manifest.detector_model == "dlib-hog-frontal").all()
    assert manifest.landmarks_model.str.match(r"2d106:2d106det.onnx:[0-9a-f]{12}\+3d68:1k3d68.onnx:[0-9a-f]{12}").all()
    assert manifest.embedding_model.str.startswith("arcface:w600k_r50.onnx:").all()
    assert (manifest.embedding_dim == 512).all() and (manifest.landmark_convention == "insightface106").all()


# -- roles, normalisation and refusals (issue 13) ----------------------------------------------------------


def _bright_square():
    image = np.zeros((1280, 1280, 3), np.uint8)
    image[640:768, 320:448] = 255
    return image


@pytest.mark.parametrize(
    "strides,kinds,anchors",
    [
        ((8, 16, 32), ("score", "bbox"), 2),  # 6 outputs: no keypoints
        ((8, 16, 32, 64, 128), ("score", "bbox"), 1),  # 10 outputs
        ((8, 16, 32, 64, 128), ("score", "bbox", "kps"), 1),  # 15 outputs
    ],
)
def test_every_scrfd_output_layout_decodes(tmp_path, strides, kinds, anchors):
    tiny_detector(tmp_path / "det.onnx", strides, kinds, anchors)
    detector = InsightFaceDetector(str(tmp_path))
    faces = detector.detect(_bright_square())
    assert len(faces) == 1
    assert faces[0].width == pytest.approx(2 * 192)
    assert detector.gives_keypoints == ("kps" in kinds)
    assert (faces[0].keypoints is not None) == ("kps" in kinds)


def test_a_keypoint_less_detector_takes_five_points_from_the_landmarks(tmp_path, reference_face, buffalo):
    rgb, dlib_face = reference_face
    folder = tmp_path / "pack"
    folder.mkdir()
    tiny_detector(folder / "det.onnx", kinds=("score", "bbox"))
    shutil.copy(buffalo / "w600k_r50.onnx", folder / "w600k_r50.onnx")
    auto = FaceAnalyzer(FaceAnalysisConfig(embedder="insightface", embedder_model=str(folder)))
    embedder = auto.embedder
    from_landmarks = embedder.embed(rgb, dlib_face.landmarks68, "ibug68", None)
    np.testing.assert_allclose(auto.embed(rgb, dlib_face), from_landmarks)  # dlib's box has no keypoints
    with pytest.raises(
        BackendError, match=r"five_points is 'detector' but the insightface detector \(.*det.onnx\) gives no keypoints"
    ):
        FaceAnalyzer(FaceAnalysisConfig(detector="insightface", detector_model=str(folder), five_points="detector"))
    with pytest.raises(BackendError, match="five_points must be one of auto, detector, landmarks"):
        FaceAnalyzer(FaceAnalysisConfig(five_points="nose"))


def test_models_that_fit_no_role_are_refused_before_any_image(tmp_path):
    yunet = tmp_path / "yunet"
    yunet.mkdir()
    tiny_detector(yunet / "face_detection_yunet.onnx", kinds=("score", "obj", "bbox", "kps"), anchors=1)  # 12 outputs
    with pytest.raises(
        BackendError, match=r"face_detection_yunet.onnx fits no InsightFace role: .*12 output\(s\).*SCRFD detector"
    ):
        InsightFaceDetector(str(yunet))
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    tiny_head(narrow / "r18_128.onnx", "input.1", 112, np.zeros((3, 128)), np.zeros(128), raw_pixels=False)
    with pytest.raises(
        BackendError, match=r"r18_128.onnx is a 128-d recogniser; the insightface embedder takes a 512-d"
    ):
        InsightFaceEmbedder(str(narrow))


def test_genderage_in_a_pack_is_ignored(tmp_path, buffalo):
    pack = tmp_path / "pack"
    shutil.copytree(buffalo, pack)
    tiny_head(pack / "genderage.onnx", "data", 96, np.zeros((3, 3)), np.zeros(3), raw_pixels=False)
    assert "genderage" in find_models(str(pack)) and InsightFaceEmbedder(str(pack))


@pytest.mark.parametrize(
    "names,landmark_model,inside",
    [
        (("Sub_0", "Mul_1"), False, True),  # PyTorch-style names
        (("_minus0", "_mul0"), False, True),  # MXNet-style names
        (("Sub_0", "conv_1"), False, False),  # only one of the two
        (("bn_data", "conv0"), True, True),  # a landmark model that starts with bn_data
        (("bn_data", "conv0"), False, False),  # ... which a recogniser rule ignores
        (("norm_a", "norm_b"), True, False),  # Sub and Mul ops under other names: not InsightFace's signal
    ],
)
def test_input_normalisation_follows_insightface_naming_rule(tmp_path, names, landmark_model, inside):
    from dynamicid.faces.backends.insightface_backend import OnnxModel

    path = tmp_path / "model.onnx"
    tiny_head(path, "data", 192, np.zeros((3, 212)), np.zeros(212), raw_pixels=True, names=names)
    assert OnnxModel(str(path)).normalises_inside(landmark_model=landmark_model) is inside

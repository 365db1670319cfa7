"""InsightFace model packs (buffalo_l, antelopev2) run with ONNX Runtime, from a local folder.

Files are recognised by their inputs and outputs (never by name or output count alone):
  detector     SCRFD: one 3-channel input; 3 or 5 strides of score (width 1), box (width 4) and, for the
               *_kps models (det_10g.onnx, scrfd_*_bnkps.onnx), 5 keypoints (width 10): 6, 9, 10 or 15 outputs
  embedder     ArcFace-style recogniser (w600k_r50.onnx / glintr100.onnx): 112x112 in, one 512-wide output
  landmarks    2d106det.onnx (192 in, 212 out: 106 points) and 1k3d68.onnx (192 in, 3309 out: 68 3-D points)
  (ignored)    genderage.onnx (96 in, 3 out), which the packs also hold
Any other .onnx file in the folder is refused, naming the file and these signatures.

Input normalisation follows InsightFace's own rule, by node names: a model whose first 8 nodes include
one named Sub*/_minus* and one named Mul*/_mul* normalises inside and takes raw pixels; so does a
landmark model with a node named bn_data among its first 3. Otherwise pixels are (x - 127.5) / 127.5
for recognisers and (x - 127.5) / 128 for detectors and landmark models.

Colour order: the networks were trained on RGB. InsightFace's own Python API takes BGR images from
OpenCV and swaps them back when it builds the input blob; DynamicID's authors handed that API RGB
arrays, so their networks saw BGR. Our images are RGB throughout and go to the networks as RGB,
with no swap anywhere.
Detection runs as InsightFace's SCRFD does by default, on two square canvases, 128 and 640 px
(DETECTION_CANVASES): the photo is resized to fit each (linear interpolation, the fitted side exact and
the other truncated with int()), padded at the bottom/right, and the candidates of both canvases are
merged by one NMS. The small canvas finds close-ups, whose faces are too large for SCRFD's anchors at
640 px; the large one finds small faces. A model with a fixed input size runs at that size alone.
Licence: the InsightFace model packs are for non-commercial research only.
"""

from __future__ import annotations

import glob
import os
from functools import cache

import cv2
import numpy as np

from dynamicid.faces.alignment import apply_affine, five_points, similarity_transform
from dynamicid.faces.backends.base import (
    BackendError,
    PreparedEmbedder,
    Resources,
    model_file_hash,
)
from dynamicid.faces.types import FaceBox

DETECTION_CANVASES = (128, 640)
DET_THRESHOLD = 0.5
NMS_IOU = 0.4
# The standard ArcFace crop: where the five points sit in a 112x112 face.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
EXPECTED = {
    "detector": "an SCRFD detector such as det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2)",
    "embedder": "w600k_r50.onnx (buffalo_l) or glintr100.onnx (antelopev2)",
    "landmarks2d": "2d106det.onnx",
    "landmarks3d": "1k3d68.onnx",
}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError("the insightface backends need ONNX Runtime: pip install 'dynamicid[insightface]'") from err
    return onnxruntime


def providers(resources: Resources | None = None) -> list:
    ort = _onnxruntime()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        device = resources.gpu if resources else None
        return [("CUDAExecutionProvider", {"device_id": device or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    def __init__(self, path: str, threads: int | None = None, resources: Resources | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        threads = threads or (resources.threads if resources else None)
        if threads:  # inside Spark: the task's cores, not the machine's
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=providers(resources))
        except Exception as err:
            raise BackendError(f"{path} is not a loadable ONNX model: {err}") from None
        self.path = path
        self.input = self.session.get_inputs()[0]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.model_id = f"{os.path.basename(path)}:{model_file_hash(path)}"

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input.name: blob})

    def input_side(self) -> int | None:
        shape = self.input.shape
        return shape[2] if isinstance(shape[2], int) else None

    def output_width(self) -> int | None:
        shape = self.session.get_outputs()[0].shape
        return shape[-1] if isinstance(shape[-1], int) else None

    def normalises_inside(self, landmark_model: bool = False) -> bool:
        """InsightFace's rule, by node names: Sub*/_minus* and Mul*/_mul* among the first 8 nodes (or, for
        landmark models, a node named bn_data among the first 3) mean the graph normalises its input itself."""
        try:
            import onnx
        except ImportError:
            return False
        nodes = onnx.load(self.path, load_external_data=False).graph.node
        subtracts = any(n.name.startswith(("Sub", "_minus")) for n in nodes[:8])
        multiplies = any(n.name.startswith(("Mul", "_mul")) for n in nodes[:8])
        batch_norm_first = landmark_model and any(n.name == "bn_data" for n in nodes[:3])
        return (subtracts and multiplies) or batch_norm_first


SIGNATURES = (
    "SCRFD detector: one 3-channel NCHW input; 6, 9, 10 or 15 outputs of widths 1 (scores), 4 (boxes) "
    "and 10 (keypoints), one per stride; recogniser: 112x112 input, one output; landmarks: 192x192 input, "
    "one output of 212 (2d106det) or 3309 (1k3d68) values; genderage: 96x96 input, one output of 3 values (ignored)"
)


def model_role(inputs: list, outputs: list) -> str | None:
    """What a model is, from its input and output shapes; None when it fits no role."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, None, "?"):
        return None
    spatial = list(inputs[0].shape[2:])
    widths = [o.shape[-1] if o.shape else None for o in outputs]
    if len(outputs) in (6, 9, 10, 15):
        strides = 3 if len(outputs) in (6, 9) else 5
        expected = [1] * strides + [4] * strides + ([10] * strides if len(outputs) in (9, 15) else [])
        ranks_ok = all(len(o.shape) in (2, 3) for o in outputs)
        return "detector" if widths == expected and ranks_ok else None
    if len(outputs) != 1:
        return None
    if spatial == [112, 112]:
        return "embedder"
    if spatial == [192, 192] and widths[0] == 212:
        return "landmarks2d"
    if spatial == [192, 192] and widths[0] == 3309:
        return "landmarks3d"
    if spatial == [96, 96] and widths[0] == 3:
        return "genderage"
    return None


@cache
def find_models(folder: str) -> dict[str, str]:
    """role -> file, by each ONNX file's inputs and outputs."""
    if not folder or not os.path.isdir(folder):
        raise BackendError(
            f"insightface model folder not found: {folder!r}; unpack buffalo_l or antelopev2 there "
            f"({', '.join(EXPECTED.values())})"
        )
    ort = _onnxruntime()
    roles: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.onnx"))):
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BackendError(f"{path} is not a loadable ONNX model: {err}") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        role = model_role(inputs, outputs)
        if role is None:
            shapes = ", ".join(str(o.shape) for o in outputs)
            raise BackendError(
                f"{path} fits no InsightFace role: input {inputs[0].shape if inputs else None}, "
                f"{len(outputs)} output(s) {shapes}. Expected one of: {SIGNATURES}. Remove it from {folder} "
                "or point the option at a folder holding only InsightFace models."
            )
        roles.setdefault(role, path)
    return roles


def _model(folder: str, role: str) -> str:
    roles = find_models(folder)
    if role not in roles:
        raise BackendError(
            f"{folder} has no {role.replace('2d', ' (2-D)').replace('3d', ' (3-D)')} model: expected {EXPECTED[role]}"
        )
    return roles[role]


# -- detection ------------------------------------------------------------------------------------------


def _anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centres, anchors, axis=0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """InsightFace's NMS: a stable order by score, and box sides counted in whole pixels (+1)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        xx0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.maximum(0.0, xx1 - xx0 + 1) * np.maximum(0.0, yy1 - yy0 + 1)
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def decode_scrfd(outputs: list[np.ndarray], canvas: int, threshold: float = DET_THRESHOLD):
    """SCRFD's raw outputs -> (boxes (N, 4), scores (N,), keypoints (N, 5, 2) or None) on the canvas.

    6 or 9 outputs: strides 8/16/32 with 2 anchors per cell; 10 or 15: strides 8..128 with one. The
    keypoint outputs (9 and 15) come last."""
    levels = 3 if len(outputs) in (6, 9) else 5
    anchors = 2 if levels == 3 else 1
    with_keypoints = len(outputs) in (9, 15)
    boxes, scores, points = [], [], []
    for level, stride in enumerate((8, 16, 32, 64, 128)[:levels]):
        score = outputs[level].reshape(-1)
        distance = outputs[level + levels].reshape(-1, 4) * stride
        side = canvas // stride
        centres = _anchor_centres(side, side, stride, anchors)
        chosen = score >= threshold
        c = centres[chosen]
        boxes.append(np.concatenate([c - distance[chosen, :2], c + distance[chosen, 2:]], axis=1))
        scores.append(score[chosen])
        if with_keypoints:
            keypoint = outputs[level + 2 * levels].reshape(-1, 10) * stride
            points.append(c[:, None, :] + keypoint[chosen].reshape(-1, 5, 2))
    return np.concatenate(boxes), np.concatenate(scores), (np.concatenate(points) if with_keypoints else None)


def fit_to_canvas(rgb: np.ndarray, canvas: int) -> tuple[np.ndarray, float]:
    """InsightFace's detection input: resized to fit (linear; the other side truncated), padded bottom/right.
    Returns the canvas (uint8) and the scale from photo to canvas."""
    height, width = rgb.shape[:2]
    if height / width > 1.0:
        new_height, new_width = canvas, int(canvas / (height / width))
    else:
        new_width, new_height = canvas, int(canvas * (height / width))
    new_width, new_height = max(1, new_width), max(1, new_height)
    padded = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    padded[:new_height, :new_width] = cv2.resize(rgb, (new_width, new_height))
    return padded, new_height / height


class InsightFaceDetector:
    name = "insightface"
    SCORE_RANGE = (0.0, 1.0)  # SCRFD's scores are probabilities

    def __init__(
        self,
        model_path: str | None = None,
        detect_side: int | None = None,
        min_score: float | None = None,
        resources: Resources | None = None,
    ):
        # detect_side is the dlib detector's setting; SCRFD uses DETECTION_CANVASES (or the model's fixed size).
        if model_path is None:
            raise BackendError("detector insightface needs detector_model, a folder (buffalo_l or antelopev2)")
        self.model = OnnxModel(_model(model_path, "detector"), resources=resources)
        self.model_id = f"scrfd:{self.model.model_id}"
        self.gives_keypoints = len(self.model.outputs) in (9, 15)
        fixed = self.model.input_side()
        self.canvases = (fixed,) if fixed else DETECTION_CANVASES
        self.threshold = DET_THRESHOLD if min_score is None else min_score

    def candidates(self, rgb: np.ndarray, canvas: int):
        """One canvas's detections above the threshold, in photo pixels, best first."""
        padded, scale = fit_to_canvas(rgb, canvas)
        blob = ((padded.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        boxes, scores, points = decode_scrfd(self.model.run(blob), canvas, self.threshold)
        order = np.argsort(-scores, kind="stable")
        return boxes[order] / scale, scores[order], (points[order] / scale if points is not None else None)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        found = [self.candidates(rgb, canvas) for canvas in self.canvases]
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        points = np.concatenate([f[2] for f in found]) if self.gives_keypoints else None
        keep = nms(boxes, scores, NMS_IOU) if len(scores) else []
        return [
            FaceBox(
                *boxes[i].tolist(),
                float(scores[i]),
                tuple(tuple(float(v) for v in p) for p in points[i]) if points is not None else None,
            )
            for i in keep
        ]


# -- landmarks --------------------------------------------------------------------------------------------


class _LandmarkNet:
    """InsightFace's landmark crop: centred on the box, 1.5x its larger side, 192 px."""

    def __init__(self, path: str, resources: Resources | None = None):
        self.model = OnnxModel(path, resources=resources)
        self.side = self.model.input_side() or 192
        self.raw_pixels = self.model.normalises_inside(landmark_model=True)

    def run(self, rgb: np.ndarray, box: FaceBox, dims: int) -> np.ndarray:
        cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
        scale = self.side / (max(box.width, box.height) * 1.5)
        matrix = np.array([[scale, 0, self.side / 2 - cx * scale], [0, scale, self.side / 2 - cy * scale]])
        crop = cv2.warpAffine(rgb, matrix, (self.side, self.side), borderValue=0).astype(np.float32)
        if not self.raw_pixels:
            crop = (crop - 127.5) / 128.0
        out = self.model.run(crop.transpose(2, 0, 1)[None])[0].reshape(-1, dims)
        points = (out[:, :2] + 1.0) * (self.side / 2)
        return apply_affine(cv2.invertAffineTransform(matrix), points)


class InsightFaceLandmarks:
    """106 2-D points (the method's landmark image) plus the 68-point layout from the 3-D model (pose, expression)."""

    name = "insightface"
    convention = "insightface106"
    conventions = ("insightface106", "ibug68")

    def __init__(self, model_path: str | None = None, resources: Resources | None = None):
        if model_path is None:
            raise BackendError("landmarks insightface needs landmarks_model, a folder (buffalo_l or antelopev2)")
        self.net2d = _LandmarkNet(_model(model_path, "landmarks2d"), resources)
        self.net3d = _LandmarkNet(_model(model_path, "landmarks3d"), resources)
        self.model_id = f"2d106:{self.net2d.model.model_id}+3d68:{self.net3d.model.model_id}"

    def landmark_sets(self, rgb: np.ndarray, box: FaceBox) -> dict[str, np.ndarray]:
        return {
            "insightface106": self.net2d.run(rgb, box, 2).astype(np.float32),
            "ibug68": self.net3d.run(rgb, box, 3)[-68:].astype(np.float32),
        }

    def landmarks(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        return self.landmark_sets(rgb, box)["insightface106"]


# -- identity ---------------------------------------------------------------------------------------------


def arcface_crop(rgb: np.ndarray, five: np.ndarray) -> np.ndarray:
    matrix = similarity_transform(np.asarray(five, dtype=np.float64), ARCFACE_TEMPLATE)
    return cv2.warpAffine(rgb, matrix, (112, 112), borderValue=0)


class InsightFaceEmbedder(PreparedEmbedder):
    """ArcFace, 512-d, L2-normalised (InsightFace's `normed_embedding`), from the 112 px crop on five points."""

    name = "insightface"
    dim = 512

    def __init__(self, model_path: str | None = None, resources: Resources | None = None):
        if model_path is None:
            raise BackendError("embedder insightface needs embedder_model, a folder (buffalo_l or antelopev2)")
        self.model = OnnxModel(_model(model_path, "embedder"), resources=resources)
        width = self.model.output_width()
        if width is not None and width != self.dim:
            raise BackendError(
                f"{self.model.path} is a {width}-d recogniser; the insightface embedder takes a {self.dim}-d "
                "ArcFace-style model (w600k_r50.onnx, glintr100.onnx), which is what the DynamicID weights were "
                "trained with. Use such a model, or the default embedder (embedder dlib-resnet)."
            )
        self.raw_pixels = self.model.normalises_inside()
        self.model_id = f"arcface:{self.model.model_id}"

    def prepare(
        self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None
    ) -> np.ndarray:
        """The normalised (3, 112, 112) crop on five points: the detector's keypoints when the box has them
        (as InsightFace does), else five from the landmarks."""
        five = np.array(box.keypoints) if box is not None and box.keypoints else five_points(landmarks, convention)
        crop = arcface_crop(rgb, five).astype(np.float32)
        if not self.raw_pixels:
            crop = (crop - 127.5) / 127.5
        return np.ascontiguousarray(crop.transpose(2, 0, 1))

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        batch = self.model.input.shape[0]
        if isinstance(batch, int):  # a fixed batch size (often 1): run in pieces of that size
            vectors = np.concatenate(
                [self.model.run(np.stack(inputs[i : i + batch]))[0] for i in range(0, len(inputs), batch)]
            )
        else:
            vectors = self.model.run(np.stack(inputs))[0]
        vectors = vectors.reshape(len(inputs), -1)
        return (vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)).astype(np.float32)

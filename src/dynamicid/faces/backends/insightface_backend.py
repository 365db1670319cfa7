"""InsightFace model packs (buffalo_l, antelopev2) run with ONNX Runtime, from a local folder.

Files are recognised by their inputs and outputs, so both packs work:
  detector     SCRFD (det_10g.onnx / scrfd_10g_bnkps.onnx): 9 outputs (score, box, 5 keypoints at strides 8/16/32)
  embedder     ArcFace (w600k_r50.onnx / glintr100.onnx): 112x112 in, 512 out
  landmarks    2d106det.onnx (192 in, 212 out: 106 points) and 1k3d68.onnx (192 in, 3309 out: 68 3-D points)

Colour order: the networks were trained on RGB. InsightFace's own Python API takes BGR images from
OpenCV and swaps them back when it builds the input blob; DynamicID's authors handed that API RGB
arrays, so their networks saw BGR. Our images are RGB throughout and go to the networks as RGB,
with no swap anywhere.
Detection runs on a fixed 640x640 canvas (the photo shrunk to fit, padded at the bottom/right):
INSIGHTFACE_DET_SIZE. Licence: the InsightFace model packs are for non-commercial research only.
"""

from __future__ import annotations

import glob
import os
from functools import lru_cache

import cv2
import numpy as np

from dynamicid.faces.alignment import apply_affine, five_points, similarity_transform
from dynamicid.faces.backends.base import BackendError, cpus_for_this_task, gpu_for_this_task, model_file_hash
from dynamicid.faces.types import FaceBox

INSIGHTFACE_DET_SIZE = 640
DET_THRESHOLD = 0.5
NMS_IOU = 0.4
# The standard ArcFace crop: where the five points sit in a 112x112 face.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
EXPECTED = {
    "detector": "det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2)",
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


def providers() -> list:
    ort = _onnxruntime()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        device = gpu_for_this_task()
        return [("CUDAExecutionProvider", {"device_id": device or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    def __init__(self, path: str, threads: int | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        threads = threads or cpus_for_this_task()
        if threads:  # inside Spark: the task's cores, not the machine's
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=providers())
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

    def normalises_inside(self) -> bool:
        """MXNet-exported models subtract and scale in the graph (as InsightFace checks): then feed raw pixels."""
        try:
            import onnx
        except ImportError:
            return False
        graph = onnx.load(self.path, load_external_data=False).graph
        names = [node.op_type for node in graph.node[:8]]
        return "Sub" in names and "Mul" in names


@lru_cache(maxsize=None)
def find_models(folder: str) -> dict[str, str]:
    """role -> file, by each ONNX file's inputs and outputs."""
    if not folder or not os.path.isdir(folder):
        raise BackendError(f"insightface model folder not found: {folder!r}; unpack buffalo_l or antelopev2 there "
                           f"({', '.join(EXPECTED.values())})")
    ort = _onnxruntime()
    roles: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.onnx"))):
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BackendError(f"{path} is not a loadable ONNX model: {err}") from None
        inputs, outputs = session.get_inputs()[0].shape, session.get_outputs()
        width = outputs[0].shape[-1]
        if len(outputs) >= 6:
            roles.setdefault("detector", path)
        elif inputs[2:] == [112, 112] and width == 512:
            roles.setdefault("embedder", path)
        elif inputs[2:] == [192, 192] and width == 212:
            roles.setdefault("landmarks2d", path)
        elif inputs[2:] == [192, 192] and width == 3309:
            roles.setdefault("landmarks3d", path)
    return roles


def _model(folder: str, role: str) -> str:
    roles = find_models(folder)
    if role not in roles:
        raise BackendError(f"{folder} has no {role.replace('2d', ' (2-D)').replace('3d', ' (3-D)')} model: "
                           f"expected {EXPECTED[role]}")
    return roles[role]


# -- detection ------------------------------------------------------------------------------------------


def _anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centres, anchors, axis=0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        best = order[0]
        keep.append(int(best))
        xx0 = np.maximum(boxes[best, 0], boxes[order[1:], 0])
        yy0 = np.maximum(boxes[best, 1], boxes[order[1:], 1])
        xx1 = np.minimum(boxes[best, 2], boxes[order[1:], 2])
        yy1 = np.minimum(boxes[best, 3], boxes[order[1:], 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        overlap = inter / (areas[best] + areas[order[1:]] - inter + 1e-9)
        order = order[1:][overlap <= iou]
    return keep


def decode_scrfd(outputs: list[np.ndarray], canvas: int, threshold: float = DET_THRESHOLD):
    """SCRFD's raw outputs -> (boxes (N, 4), scores (N,), keypoints (N, 5, 2)) on the detection canvas."""
    levels = len(outputs) // 3
    strides = (8, 16, 32, 64, 128)[:levels]
    boxes, scores, points = [], [], []
    for level, stride in enumerate(strides):
        score = outputs[level].reshape(-1)
        distance = outputs[level + levels].reshape(-1, 4) * stride
        keypoint = outputs[level + 2 * levels].reshape(-1, 10) * stride
        side = canvas // stride
        anchors = max(1, score.size // (side * side))
        centres = _anchor_centres(side, side, stride, anchors)
        chosen = score >= threshold
        c = centres[chosen]
        boxes.append(np.concatenate([c - distance[chosen, :2], c + distance[chosen, 2:]], axis=1))
        scores.append(score[chosen])
        points.append(c[:, None, :] + keypoint[chosen].reshape(-1, 5, 2))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)


class InsightFaceDetector:
    name = "insightface"

    def __init__(self, model_path: str | None = None, detect_side: int = INSIGHTFACE_DET_SIZE,
                 min_score: float | None = None):
        if model_path is None:
            raise BackendError("--detector insightface needs --detector-model FOLDER (buffalo_l or antelopev2)")
        self.model = OnnxModel(_model(model_path, "detector"))
        self.model_id = f"scrfd:{self.model.model_id}"
        self.canvas = INSIGHTFACE_DET_SIZE  # fixed: the anchors assume it
        self.threshold = DET_THRESHOLD if min_score is None else min_score

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        height, width = rgb.shape[:2]
        scale = self.canvas / max(height, width)
        resized = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.canvas, self.canvas, 3), dtype=np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
        boxes, scores, points = decode_scrfd(self.model.run(blob), self.canvas, self.threshold)
        keep = nms(boxes, scores, NMS_IOU) if len(scores) else []
        return [
            FaceBox(*(boxes[i] / scale).tolist(), float(scores[i]),
                    tuple(tuple(float(v) for v in p) for p in points[i] / scale))
            for i in keep
        ]


# -- landmarks --------------------------------------------------------------------------------------------


class _LandmarkNet:
    """InsightFace's landmark crop: centred on the box, 1.5x its larger side, 192 px."""

    def __init__(self, path: str):
        self.model = OnnxModel(path)
        self.side = self.model.input_side() or 192
        self.raw_pixels = self.model.normalises_inside()

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

    def __init__(self, model_path: str | None = None):
        if model_path is None:
            raise BackendError("--landmarks insightface needs --landmarks-model FOLDER (buffalo_l or antelopev2)")
        self.net2d = _LandmarkNet(_model(model_path, "landmarks2d"))
        self.net3d = _LandmarkNet(_model(model_path, "landmarks3d"))
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


class InsightFaceEmbedder:
    """ArcFace, 512-d, L2-normalised (InsightFace's `normed_embedding`), from the 112 px crop on five points."""

    name = "insightface"
    dim = 512

    def __init__(self, model_path: str | None = None):
        if model_path is None:
            raise BackendError("--embedder insightface needs --embedder-model FOLDER (buffalo_l or antelopev2)")
        self.model = OnnxModel(_model(model_path, "embedder"))
        self.raw_pixels = self.model.normalises_inside()
        self.model_id = f"arcface:{self.model.model_id}"

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None) -> np.ndarray:
        # The detector's own five points when it gave them (as InsightFace does), else five from the landmarks.
        five = np.array(box.keypoints) if box is not None and box.keypoints else five_points(landmarks, convention)
        crop = arcface_crop(rgb, five).astype(np.float32)
        if not self.raw_pixels:
            crop = (crop - 127.5) / 127.5
        vector = self.model.run(crop.transpose(2, 0, 1)[None])[0].reshape(-1)
        return (vector / (np.linalg.norm(vector) + 1e-12)).astype(np.float32)

"""The default backend: dlib, with weights that ship inside the `face_recognition_models` package.

Licence note: dlib's 68-point shape predictor was trained on iBUG 300-W, which excludes commercial use.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from dynamicid.faces.backends.base import BackendError, PreparedEmbedder, model_file_hash
from dynamicid.faces.types import FaceBox

MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
}


def _import_dlib():
    try:
        import dlib
    except ImportError as err:  # pragma: no cover - dlib-bin is a hard dependency
        raise BackendError("dlib is not installed: `pip install dlib-bin`") from err
    return dlib


def default_model_dir() -> str:
    # Located without importing the package: its __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the dlib model files were not found: `pip install face_recognition_models` "
            "or pass a folder holding " + ", ".join(MODEL_FILES.values())
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _model_file(model_dir: str | None, key: str) -> str:
    folder = model_dir or default_model_dir()
    path = os.path.join(folder, MODEL_FILES[key])
    if not os.path.isfile(path):
        raise BackendError(f"missing dlib model file: expected {MODEL_FILES[key]} in {folder}")
    return path


class DlibHogDetector:
    """HOG + linear SVM. Runs at most at `detect_side` px; upsamples only when nothing is found."""

    name = "dlib-hog"
    model_id = "dlib-hog-frontal"

    # SVM margin; real faces in our test photos score >= 0.55, false hits on patterns score ~0.06.
    DEFAULT_MIN_SCORE = 0.25

    def __init__(self, model_path: str | None = None, detect_side: int = 512, min_score: float | None = None):
        self._dlib = _import_dlib()
        self._detector = self._dlib.get_frontal_face_detector()
        self.detect_side = detect_side
        self.min_score = self.DEFAULT_MIN_SCORE if min_score is None else min_score

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        import cv2

        height, width = rgb.shape[:2]
        scale = min(1.0, self.detect_side / max(height, width))
        small = rgb
        if scale < 1.0:
            small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        small = np.ascontiguousarray(small)
        for upsample in (0, 1):  # HOG misses faces under ~80 px; upsampling costs 4x, so only on a miss
            rects, scores, _ = self._detector.run(small, upsample, self.min_score)
            if len(rects):
                break
        return [
            FaceBox(r.left(), r.top(), r.right() + 1, r.bottom() + 1, float(s)).scaled(1.0 / scale)
            for r, s in zip(rects, scores)
        ]


class DlibLandmarks68:
    name = "dlib-68"
    convention = "ibug68"

    def __init__(self, model_path: str | None = None):
        self._dlib = _import_dlib()
        path = _model_file(model_path, "landmarks68")
        self._predictor = self._dlib.shape_predictor(path)
        self.model_id = f"dlib-68:{model_file_hash(path)}"

    def landmarks(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        rect = self._dlib.rectangle(
            int(round(box.x0)), int(round(box.y0)), int(round(box.x1)) - 1, int(round(box.y1)) - 1
        )
        shape = self._predictor(rgb, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


class DlibResNetEmbedder(PreparedEmbedder):
    """dlib's 128-d ResNet descriptor: dlib cuts its 150 px chip aligned on 68 points, and the network,
    read from dlib's own file, runs in PyTorch (`dlib_torch`), in batches. The same embeddings as dlib's
    own code (`dlib-resnet-native`), about 7x faster on one core."""

    name = "dlib-resnet"
    dim = 128

    def __init__(self, model_path: str | None = None):
        self._dlib = _import_dlib()
        path = _model_file(model_path, "embedder")
        self._load(path)
        self.model_id = f"dlib-resnet-v1:{model_file_hash(path)}"  # the same network and weights either way

    def _load(self, path: str) -> None:
        from dynamicid.faces.backends.dlib_torch import DlibResNet, read_network

        self.network = DlibResNet(read_network(path)).eval()

    def prepare(
        self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None
    ) -> np.ndarray:
        if convention != "ibug68" or len(landmarks) != 68:
            raise BackendError(f"{self.name} needs 68 iBUG landmarks, got {len(landmarks)} ({convention})")
        dlib = self._dlib
        x0, y0 = landmarks.min(axis=0)
        x1, y1 = landmarks.max(axis=0)
        rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
        # compute_face_descriptor's own chip: 150 px, padding 0.25
        return np.ascontiguousarray(dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=150, padding=0.25))

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            return self.network(torch.from_numpy(np.stack(inputs))).numpy().astype(np.float32)


class DlibNativeResNetEmbedder(DlibResNetEmbedder):
    """The same descriptor computed by dlib's own code (no BLAS in dlib-bin: slower), one chip at a time."""

    name = "dlib-resnet-native"

    def _load(self, path: str) -> None:
        self._model = self._dlib.face_recognition_model_v1(path)

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        vectors = [np.asarray(self._model.compute_face_descriptor(chip), dtype=np.float32) for chip in inputs]
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)

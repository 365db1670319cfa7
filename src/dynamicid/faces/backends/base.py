"""Backend interfaces and the registry that maps stage + name to a factory."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dynamicid.errors import ModelError
from dynamicid.faces.types import FaceBox
from dynamicid.filestamps import file_sha256


class BackendError(ModelError):
    """A backend cannot be built: unknown name, missing or broken model files."""


@dataclass(frozen=True)
class Resources:
    """What the code running a backend was given: a GPU index (None: none assigned, use the first when there is
    one) and a thread count (None: the library's own choice). The Spark layer fills it from its task
    (`prep.spark_job.task_resources`); faces/ never asks Spark itself."""

    gpu: int | None = None
    threads: int | None = None

    def torch_device(self) -> Any:
        import torch

        return torch.device(f"cuda:{self.gpu or 0}") if torch.cuda.is_available() else torch.device("cpu")


@cache
def model_file_hash(path: str) -> str:
    """12 hex digits of a model file's sha256: with its name, what the manifest records as the model."""
    return file_sha256(path)[:12]


@runtime_checkable
class FaceDetector(Protocol):
    name: str
    model_id: str  # name plus a short hash of the weights, recorded in the manifest

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in an RGB uint8 image, in its pixel coordinates."""


@runtime_checkable
class LandmarkModel(Protocol):
    name: str
    model_id: str
    convention: str  # e.g. "ibug68"; see faces.alignment.FIVE_POINT_INDICES

    def landmarks(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """(K, 2) float32 points for the face in `box`.

        A backend that measures several layouts at once may also define
        `landmark_sets(rgb, box) -> {convention: points}`; `convention` names the primary set, and an
        "ibug68" set, when given, feeds pose and expression."""


@runtime_checkable
class FaceEmbedder(Protocol):
    name: str
    model_id: str
    dim: int

    def prepare(
        self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None
    ) -> np.ndarray:
        """The network's input for one face: a small aligned crop, cut from the photo with these landmarks
        (and the box, whose detector keypoints some embedders align on). Small, so a batch can wait for it."""

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 identity embeddings of prepared inputs, in batches where the model takes them."""

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None) -> np.ndarray:
        """(dim,) float32 identity embedding of one face: `embed_prepared([prepare(...)])[0]`."""


class PreparedEmbedder:
    """What every embedder shares: one face is a batch of one prepared input."""

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray, convention: str, box: FaceBox | None = None) -> np.ndarray:
        return self.embed_prepared([self.prepare(rgb, landmarks, convention, box)])[0]


@runtime_checkable
class Captioner(Protocol):
    name: str
    model_id: str

    def caption(self, aligned_rgb: np.ndarray, facts: dict) -> str:
        """One caption for an aligned face. `facts` holds what was measured (face prompt, pose, cues).

        A backend that batches may also define `caption_batch(images, facts) -> list[str]`
        (see `faces.caption.caption_many`); `prep` hands it all the faces of a Spark batch at once."""


STAGES = ("detector", "landmarks", "embedder", "captioner")

# stage -> name -> "module:attribute" (imported lazily so optional backends cost nothing)
_REGISTRY: dict[str, dict[str, str | Callable]] = {stage: {} for stage in STAGES}


def register(stage: str, name: str, factory: str | Callable) -> None:
    if stage not in _REGISTRY:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    _REGISTRY[stage][name] = factory


def available(stage: str) -> list[str]:
    return sorted(_REGISTRY[stage])


def backend_class(stage: str, name: str) -> Callable:
    """The registered factory (a class, for the shipped backends) of `name`, imported, without building it."""
    try:
        factory = _REGISTRY[stage][name]
    except KeyError:
        raise BackendError(
            f"unknown {stage} backend {name!r}; available: {', '.join(available(stage)) or 'none'}"
        ) from None
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory


def check_detection_score(name: str, score: float | None) -> None:
    """A --min-detection-score inside the detector's own score range (SCORE_RANGE: SCRFD's scores are
    probabilities; dlib's HOG margins are unbounded, so any number is legal there)."""
    if score is None:
        return
    low, high = getattr(backend_class("detector", name), "SCORE_RANGE", (float("-inf"), float("inf")))
    if not low <= score <= high:
        from dynamicid.errors import ConfigError

        raise ConfigError(
            f"min_detection_score (--min-detection-score) {score:g} is outside the {name} detector's scores, "
            f"{low:g} to {high:g}: every face would be dropped. Give a value in that range"
        )


def create(stage: str, name: str, model_path: str | None = None, resources: Resources | None = None, **options):
    """Build the backend `name` for `stage`, loading its model from `model_path` if it takes one."""
    factory = backend_class(stage, name)
    if resources is not None and "resources" in inspect.signature(factory).parameters:
        options["resources"] = resources  # only backends that use a device or threads take it
    return factory(resolve_model(model_path, f"{stage} {name}"), **options)


def resolve_model(model_path: str | None, what: str) -> str | None:
    """A model folder or file as given, or a Hugging Face repo id (org/name[/subfolder]) resolved to its
    snapshot in the Hugging Face cache."""
    from dynamicid.hub import HubError, local_or_resolved

    try:  # a path stays a path: the backend says what is missing, in its own words
        return local_or_resolved(model_path, what)
    except HubError as err:
        raise BackendError(str(err)) from None


register("detector", "dlib-hog", "dynamicid.faces.backends.dlib_backend:DlibHogDetector")
register("landmarks", "dlib-68", "dynamicid.faces.backends.dlib_backend:DlibLandmarks68")
register("embedder", "dlib-resnet", "dynamicid.faces.backends.dlib_backend:DlibResNetEmbedder")
register("embedder", "dlib-resnet-native", "dynamicid.faces.backends.dlib_backend:DlibNativeResNetEmbedder")
register("captioner", "measured", "dynamicid.faces.caption:MeasuredCaptioner")
register("detector", "insightface", "dynamicid.faces.backends.insightface_backend:InsightFaceDetector")
register("landmarks", "insightface", "dynamicid.faces.backends.insightface_backend:InsightFaceLandmarks")
register("embedder", "insightface", "dynamicid.faces.backends.insightface_backend:InsightFaceEmbedder")
register("captioner", "internvl", "dynamicid.faces.backends.internvl_backend:InternVLCaptioner")
register("landmarks", "fan", "dynamicid.faces.backends.fan_backend:FanLandmarks")

"""Face backends. Each stage (detector, landmarks, embedder, captioner) picks one by name.

A backend is registered with `register(stage, name)`, built once per worker by `create`, and
must load everything it needs in its constructor so that a missing model fails before any image.
"""

from dynamicid.faces.backends.base import (
    BackendError,
    Captioner,
    FaceDetector,
    FaceEmbedder,
    LandmarkModel,
    Resources,
    available,
    create,
    register,
)

__all__ = [
    "BackendError",
    "Captioner",
    "FaceDetector",
    "FaceEmbedder",
    "LandmarkModel",
    "Resources",
    "available",
    "create",
    "register",
]

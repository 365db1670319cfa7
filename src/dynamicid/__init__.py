"""DynamicID: identity-preserving multi-person image personalization.

Layout follows the data flow:
  faces/       face analysis shared by prep, generation, eval and serving
  prep/        the Spark face-data job (and its Spark session set-up)
  models/      DynamicID model parts (face encoder, SAA, IMR, KeyPointEncoder) and the frozen base models
  training/    two-stage training
  generation/  the diffusers pipeline: persons in, images and sidecars out
  evaluation/  scoring images against reference photos
  serving/     the web app and HTTP API
  testing/     tiny random models with the real interfaces
  cli.py       the dispatcher; each package owns its command (PACKAGE/cli.py)
See ARCHITECTURE.md.
"""

__version__ = "0.1.0"

# diffusers finds a saved pipeline's parts by library and class name ("dynamicid", "FaceEncoder"); they load
# on first use, so `import dynamicid` stays light.
_LAZY = {
    "FaceEncoder": "dynamicid.models.face_encoder",
    "IMR": "dynamicid.models.imr",
    "KeyPointEncoder": "dynamicid.models.imr",
    "DynamicIDAttention": "dynamicid.models.saa",
    "DynamicIDPipeline": "dynamicid.generation.pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynamicid' has no attribute {name!r}")

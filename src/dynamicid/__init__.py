"""DynamicID: identity-preserving multi-person image personalization.

Layout follows the data flow:
  faces/       face analysis shared by prep, generation and eval
  prep/        the Spark face-data pipeline
  models/      DynamicID model parts (face encoder, SAA, IMR, KeyPointEncoder)
  training/    two-stage training
  pipeline/    generation
  evaluation/  scoring generated images
  cli.py       the one command line
"""

__version__ = "0.1.0"

# diffusers finds a saved pipeline's parts by library and class name ("dynamicid", "FaceEncoder"); they load
# on first use, so `import dynamicid` stays light.
_LAZY = {
    "FaceEncoder": "dynamicid.models.face_encoder",
    "IMR": "dynamicid.models.imr",
    "KeyPointEncoder": "dynamicid.models.imr",
    "DynamicIDAttention": "dynamicid.models.saa",
    "DynamicIDPipeline": "dynamicid.pipeline.pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynamicid' has no attribute {name!r}")

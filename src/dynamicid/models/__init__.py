"""DynamicID model parts, each a diffusers `ModelMixin` + `ConfigMixin` (save_pretrained, from_pretrained,
from_config). They depend only on torch and diffusers, never on prep, training or the pipeline.

  face_encoder.FaceEncoder        ArcFace + CLIP hidden states -> 4 ID tokens per person
  saa                             SAA cross-attention and LoRA self-attention processors, install/remove
  imr.KeyPointEncoder, imr.IMR    landmark image -> motion feature; ID-token editing
  checkpoints                     the authors' .bin files and our safetensors
"""

import importlib
import logging
from typing import Any

# The parts load on first use, so `dynamicid --help` and the commands that need no model do not import
# diffusers (2 s).
_WHERE = {
    "FaceEncoder": "face_encoder",
    "IMR": "imr",
    "KeyPointEncoder": "imr",
    "DynamicIDAttention": "saa",
    "SAASettings": "saa",
    "install_processors": "saa",
    "remove_processors": "saa",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"dynamicid.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dynamicid.models' has no attribute {name!r}")


class _NoEmptyFloat32Warning(logging.Filter):
    """diffusers 0.42 warns on every `ModelMixin.to(dtype)` that modules "should be kept in float32: []",
    an empty list: no module is concerned, so the line says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFloat32Warning())

__all__ = [
    "DynamicIDAttention",
    "FaceEncoder",
    "IMR",
    "KeyPointEncoder",
    "SAASettings",
    "install_processors",
    "remove_processors",
]

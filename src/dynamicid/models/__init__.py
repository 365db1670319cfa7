"""DynamicID model parts. They depend only on torch (and diffusers' UNet for the processors),
never on prep, training or the pipeline.

  face_encoder.FaceEncoder        ArcFace + CLIP hidden states -> 4 ID tokens per person
  saa                             SAA cross-attention and LoRA self-attention processors, install/remove
  imr.KeyPointEncoder, imr.IMR    landmark image -> motion feature; ID-token editing
  checkpoints                     the authors' .bin files and our safetensors
"""

from dynamicid.models.face_encoder import FaceEncoder
from dynamicid.models.imr import IMR, KeyPointEncoder
from dynamicid.models.saa import DynamicIDAttention, SAASettings, install_processors, remove_processors

__all__ = [
    "DynamicIDAttention",
    "FaceEncoder",
    "IMR",
    "KeyPointEncoder",
    "SAASettings",
    "install_processors",
    "remove_processors",
]

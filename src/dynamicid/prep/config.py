"""Typed configuration of `dynamicid prep`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.imagefile import ValidationConfig

MULTI_FACE_POLICIES = ("largest", "skip", "all")
LAYOUTS = ("by-identity", "flat")


@dataclass(frozen=True)
class PrepConfig:
    input: str
    output: str
    layout: str = "by-identity"  # identity = first-level subfolder; "flat": no identities
    multi_face: str = "largest"
    faces: FaceAnalysisConfig = field(default_factory=FaceAnalysisConfig)
    captioner: str = "measured"
    captioner_model: str | None = None
    caption_max_tokens: int = 64  # new tokens a model captioner may write
    caption_batch_size: int = 16  # faces per generation batch (a task's faces are captioned together)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    jpeg_quality: int = 95
    master: str | None = None  # None: local[*], or whatever spark-submit set
    images_per_partition: int = 32
    contact_sheet_faces: int = 48
    progress: bool = True

    def __post_init__(self):
        if self.multi_face not in MULTI_FACE_POLICIES:
            raise ValueError(f"--multi-face must be one of {', '.join(MULTI_FACE_POLICIES)}, not {self.multi_face!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.images_per_partition < 1:
            raise ValueError("--images-per-partition must be at least 1")
        if self.caption_max_tokens < 1 or self.caption_batch_size < 1:
            raise ValueError("--caption-max-tokens and --caption-batch-size must be at least 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("--jpeg-quality must be in 1..100")
        if self.faces.detect_side < 64:
            raise ValueError(f"--detect-side must be at least 64 px, not {self.faces.detect_side}")
        if self.faces.aligned_size % 8 or self.faces.aligned_size < 64:
            raise ValueError("the aligned size must be a multiple of 8, at least 64")

    def output_affecting(self) -> dict:
        """Everything that changes what is written for an image; paths and engine settings excluded."""
        return {
            "faces": self.faces.identity(),
            "multi_face": self.multi_face,
            "captioner": [self.captioner, self.captioner_model, self.caption_max_tokens],
            "validation": asdict(self.validation),
            "jpeg_quality": self.jpeg_quality,
            "format": 1,
        }

    def captioner_options(self) -> dict:
        return {"max_new_tokens": self.caption_max_tokens, "batch_size": self.caption_batch_size}

    def config_hash(self) -> str:
        blob = json.dumps(self.output_affecting(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

"""Typed configuration of `dynamicid eval`."""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamicid.faces.analyzer import FaceAnalysisConfig


@dataclass(frozen=True)
class EvalConfig:
    input: str  # a folder of images with JSON sidecars, or a .csv / .json list
    output: str
    faces: FaceAnalysisConfig = field(default_factory=FaceAnalysisConfig)
    clip_model: str | None = None  # local CLIP folder (transformers layout) for CLIP-T
    report_columns: int = 4
    mirror_check: bool = False  # also measure each face in the mirror image and report the face prompts' agreement
    progress: bool = True

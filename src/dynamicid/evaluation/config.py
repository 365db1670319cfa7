"""Typed configuration of `dynamicid eval`."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.options import check_limits, option


@dataclass(frozen=True)
class EvalConfig:
    input: str = option(help="a folder of images with JSON sidecars, a .csv or a .json list", positional=True)
    output: str = option(help="folder for the scores and the report", positional=True)
    faces: FaceAnalysisConfig = option(factory=FaceAnalysisConfig)
    clip_model: str | None = option(
        None, "CLIP model (transformers layout) to compute CLIP-T: a folder or a Hugging Face repo id"
    )
    report_columns: int = option(4, "images per row of report.png", limits=(1, 64))

    mirror_check: bool = option(
        False,
        "also analyse every image's mirror image: the face prompts of a face and its "
        "mirror must agree (same emotion, tilt and view, opposite side); reports the share "
        "that do (mirror_consistency), a check of the face-prompt measurement itself",
    )
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        check_limits(self)

"""Typed configuration of `dynamicid eval`."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.generation.config import DTYPES, hub_default_help
from dynamicid.generation.request import DEFAULT_STEPS
from dynamicid.options import check_limits, option


@dataclass(frozen=True)
class EvalConfig:
    input: str = option(
        help="a folder of images with JSON sidecars, a .csv or a .json list; or prep's output folder, whose held-out "
        "identities (--split) are generated with --weights and then scored",
        positional=True,
    )
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
    # Held-out identities: used when INPUT is prep's output.
    split: str = option(
        "test", "with a dataset as INPUT: the split whose identities are generated", choices=("val", "test", "train")
    )
    prompts: str | None = option(
        None,
        "with a dataset: a text file, one prompt a line, optionally 'prompt | face prompt' (default: one plain prompt)",
    )
    max_identities: int = option(
        50, "with a dataset: held-out identities used at most (first by name)", limits=(1, 1_000_000)
    )
    two_person: bool = option(
        True, "with a dataset: no two-person images (held-out identities in pairs, which measure leakage)"
    )
    weights: str | None = option(None, hub_default_help("weights", "with a dataset: the DynamicID weights under test"))
    base_model: str | None = option(None, hub_default_help("base_model", "with a dataset: Stable Diffusion 1.5"))
    clip_image_encoder: str | None = option(
        None, hub_default_help("clip_image_encoder", "with a dataset: CLIP ViT-H/14")
    )
    steps: int = option(DEFAULT_STEPS, "with a dataset: denoising steps", limits=(1, 1000))
    height: int | None = option(None, "with a dataset: image height (default as generate)", limits=(8, 16384))
    width: int | None = option(None, "with a dataset: image width (default as height)", limits=(8, 16384))
    seed: int = option(0, "with a dataset: random seed of every image", limits=(0, 2**63 - 1))
    device: str | None = option(None, "with a dataset: torch device (default as generate)")
    dtype: str | None = option(None, "with a dataset: weights' precision (default as generate)", choices=DTYPES)
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        check_limits(self)

"""Typed configuration of `dynamicid generate` and `dynamicid download`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamicid.errors import ConfigError
from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.generation.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_ID_SCALE,
    DEFAULT_STEPS,
    Person,
    RequestLimits,
    Settings,
    check_identities_option,
    check_settings,
    default_size,
    retries_option,
)
from dynamicid.options import option
from dynamicid.responsible.consent import ConsentOptions
from dynamicid.responsible.credentials import CredentialOptions
from dynamicid.responsible.watermark import watermark_option

DTYPES = ("float32", "float16", "bfloat16")


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, Any]:
    """The one rule of generate and serve: cuda when there is a GPU, else cpu; float16 on a GPU, else float32."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, dtype)


def hub_default_help(part: str, what: str) -> Any:
    def text() -> str:
        from dynamicid.hub import DEFAULTS

        return f"{what}: a folder or a Hugging Face repo id (default {DEFAULTS[part].reference})"

    return text


@dataclass(frozen=True)
class GenerateConfig:
    """`dynamicid generate`: the i-th face_prompt, box, target_landmarks and name belong to the i-th person."""

    prompt: str = option(help="the text prompt")
    output: str = option(help="output folder")
    person: tuple[str, ...] = option(
        help="reference photo of a person (repeat per person)", factory=tuple, append=True, required=True
    )
    face_prompt: tuple[str, ...] = option(
        help="e.g. 'in a happy expression, in side view' ('-' for none)", factory=tuple, append=True
    )
    box: tuple[str, ...] = option(
        help="x0,y0,x1,y1 as fractions of the image ('-' for none)", factory=tuple, append=True
    )
    target_landmarks: tuple[str, ...] = option(
        help="a 96x96 landmark map or prep's NAME.png ('-' for none)", factory=tuple, append=True
    )
    name: tuple[str, ...] = option(help="person names for the sidecar", factory=tuple, append=True)
    negative_prompt: str | None = option(None, "what the images should not show")
    base_model: str | None = option(
        None, hub_default_help("base_model", "Stable Diffusion 1.5 (or a fine-tune) in diffusers layout")
    )
    weights: str | None = option(
        None,
        hub_default_help(
            "weights",
            "DynamicID weights, ours or the authors' .bin files "
            "(the default comes with InsightFace buffalo_l analysis)",
        ),
    )
    clip_image_encoder: str | None = option(None, hub_default_help("clip_image_encoder", "CLIP ViT-H/14 vision model"))
    file_name: str = option("dynamicid", "stem of the written files: STEM_k.png and STEM_k.json")
    overwrite: bool = option(
        False, "replace earlier STEM_k files from 0 (default: number on after the highest k already there)"
    )
    steps: int = option(DEFAULT_STEPS, "denoising steps")
    guidance: float = option(DEFAULT_GUIDANCE, "classifier-free guidance scale")
    height: int | None = option(None, "image height (default 512 for one person, 768 for two, 1024 for more)")
    width: int | None = option(None, "image width (default as height)")
    images: int = option(1, "images per prompt")
    limits: RequestLimits = option(factory=RequestLimits)
    consent: ConsentOptions = option(factory=ConsentOptions)
    credentials: CredentialOptions = option(factory=CredentialOptions)
    watermark: bool = watermark_option()
    check_identities: bool = check_identities_option(False)
    retries: int = retries_option(0)
    seed: int = option(0, "random seed")
    id_scale: float = option(DEFAULT_ID_SCALE, "strength of the identity injection")
    infer_scale: float | None = option(
        None,
        "the authors' infer_scale, the layout strength s: for the first "
        "infer_end steps the gate becomes w/(s+1) outside the boxes and w+s inside "
        "(default 2 with boxes or several persons, else 0)",
    )
    infer_end: int | None = option(
        None,
        "the authors' infer_end: the denoising steps the layout boost lasts "
        "(default 12 with boxes or several persons, else 0); routing holds at every step",
    )
    gate: bool = option(
        True, "turn SAA's gate off: IP-Adapter-style injection with no gate, no layout boost and no routing"
    )
    save_gate_maps: bool = option(False, "also write gates/NAME_k.png, where each person's identity went")
    device: str | None = option(None, "torch device (default: cuda when there is a GPU, else cpu)")
    dtype: str | None = option(None, "weights' precision (default: float16 on a GPU, else float32)", choices=DTYPES)
    faces: FaceAnalysisConfig = option(factory=FaceAnalysisConfig)
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        from dynamicid.generation.outputs import check_file_name

        check_file_name(self.file_name)

    def persons(self) -> list[Person]:
        for listed in ("face_prompt", "box", "target_landmarks", "name"):
            if len(getattr(self, listed)) > len(self.person):
                raise ConfigError(
                    f"more {listed} values ({len(getattr(self, listed))}) than persons "
                    f"({len(self.person)}); give one person per reference photo"
                )
        return [
            Person(
                photo,
                _nth(self.face_prompt, i),
                _nth(self.target_landmarks, i),
                _box(_nth(self.box, i)),
                _nth(self.name, i),  # None: the sidecar's person{i}, and messages say "person {i + 1}"
            )
            for i, photo in enumerate(self.person)
        ]

    def settings(self) -> Settings:
        """The settings the server's API takes too, through the same check (types, finite ranges)."""
        keys = ("steps", "guidance", "height", "width", "seed", "id_scale", "infer_scale", "infer_end")
        given = {key: getattr(self, key) for key in keys} | {
            "negative_prompt": self.negative_prompt,
            "gate_maps": self.save_gate_maps,
        }
        return check_settings(given, "generate options")

    def size(self) -> tuple[int, int]:
        return default_size(len(self.person), self.height, self.width)


def _nth(values: tuple[str, ...], index: int) -> str | None:
    value = values[index] if index < len(values) else None
    return None if value in (None, "", "-") else value


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"box {text!r} must be four numbers x0,y0,x1,y1 (fractions of the image)")
    return values[0], values[1], values[2], values[3]


@dataclass(frozen=True)
class DownloadConfig:
    to: str | None = option(
        None, "a folder to hold everything (use it later with HF_HOME=DIR); default: the Hugging Face cache"
    )
    fp16: bool = option(False, "the base model's half-precision files (for a GPU)")
    face_pack_url: str | None = option(None, "where to fetch buffalo_l.zip from (default: InsightFace's release)")
    progress: bool = option(True, "no progress bars")

"""Loading the frozen base models from local folders, with errors that say what to put where."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dynamicid.hub import base_model_folder, local_or_resolved
from dynamicid.models.checkpoints import CheckpointError

BASE_MODEL_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_folder(folder: str | None, parts: tuple[str, ...], what: str) -> None:
    if not folder or not os.path.isdir(folder):
        raise CheckpointError(f"{what} folder not found: {folder!r}")
    missing = [p for p in parts if not os.path.exists(os.path.join(folder, p))]
    if missing:
        raise CheckpointError(f"{what} folder {folder} is missing {', '.join(missing)} (diffusers layout expected)")


@dataclass
class BaseModel:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict[str, Any]


def _resolved(reference: str | None, what: str, patterns: tuple[str, ...] | None = None) -> str:
    folder = local_or_resolved(reference, what, patterns)
    if not folder:
        raise CheckpointError(f"no {what} given: set it to a folder or a Hugging Face repo id")
    return folder


def load_base_model(folder: str, variant: str | None = None) -> BaseModel:
    """Stable Diffusion 1.5 (or a fine-tune) in diffusers layout; `variant` "fp16" reads the half-size files."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not folder:
        raise CheckpointError("no base model given: set it to a folder or a Hugging Face repo id")
    folder, variant = base_model_folder(folder, variant)
    check_folder(folder, BASE_MODEL_PARTS, "base model")
    from diffusers import DDIMScheduler

    return BaseModel(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True, variant=variant),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, variant=variant),
        text_encoder=CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", local_files_only=True, variant=variant
        ),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        scheduler_config=dict(DDIMScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)),
    )


def load_clip_image_encoder(folder: str) -> tuple[Any, Any]:
    """(CLIPVisionModelWithProjection, CLIPImageProcessor); the default processor when the folder has none."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = _resolved(folder, "CLIP image encoder")
    check_folder(folder, ("config.json",), "CLIP image encoder")
    model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    else:
        processor = CLIPImageProcessor()
    return model, processor


def encode_text(tokenizer: Any, text_encoder: Any, texts: list[str], device: Any) -> tuple[Any, Any]:
    """(last hidden states (B, 77, D), pooled (B, D)), as diffusers' SD pipeline encodes prompts."""
    tokens = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    out = text_encoder(tokens.input_ids.to(device), attention_mask=None)
    return out[0], out[1]


def dropped_text(tokenizer: Any, text: str) -> str | None:
    """The end of `text` the text encoder never reads (past its `model_max_length` tokens, 77 for CLIP), or
    None when all of it fits. `encode_text` cuts there, as diffusers' pipelines do."""
    ids = tokenizer(text, truncation=False, verbose=False).input_ids  # with the start and end tokens
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    return tokenizer.decode(ids[limit - 1 : -1]).strip()


def clip_hidden_states(image_encoder: Any, image_processor: Any, images: list[Any], device: Any, dtype: Any) -> Any:
    """CLIP penultimate hidden states; None for an image gives those of an all-zero pixel tensor."""
    import torch

    size = image_processor.crop_size
    blank = torch.zeros(3, size["height"], size["width"])
    real = [im for im in images if im is not None]
    pixels = image_processor(images=real, return_tensors="pt").pixel_values if real else None
    stacked, cursor = [], 0
    for im in images:
        if im is None:
            stacked.append(blank)
        else:
            stacked.append(pixels[cursor])  # type: ignore[index]  # set whenever an image is not None
            cursor += 1
    out = image_encoder(torch.stack(stacked).to(device, dtype), output_hidden_states=True)
    return out.hidden_states[-2]

"""Building a DynamicIDPipeline: from parts (each a folder or a Hugging Face repo id, with defaults), from a
saved pipeline, or on top of an existing Stable Diffusion pipeline."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import torch

from dynamicid import hub
from dynamicid.faces import FaceAnalysisConfig
from dynamicid.faces.record import check_same_embedder, config_of
from dynamicid.models.basemodel import load_base_model, load_clip_image_encoder
from dynamicid.models.checkpoints import load_weights
from dynamicid.models.saa import processor_layout


def _model_index(reference: str) -> dict[str, Any] | None:
    """The model_index.json of a folder or repo, or None when it has none (without downloading the repo)."""
    if os.path.isdir(reference):
        path = os.path.join(reference, "model_index.json")
    else:
        from huggingface_hub import hf_hub_download

        try:
            repo, subfolder = hub.split_reference(reference)
            path = hf_hub_download(repo, "model_index.json", subfolder=subfolder)
        except Exception:  # no such repo or file, or offline and not cached: not a saved pipeline
            return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_saved_pipeline(reference: str | None) -> bool:
    return bool(reference) and (_model_index(str(reference)) or {}).get("_class_name") == "DynamicIDPipeline"


def is_saved_folder(reference: Any) -> bool:
    """A saved pipeline on this machine (nothing is fetched to tell)."""
    return isinstance(reference, (str, os.PathLike)) and os.path.isdir(reference) and is_saved_pipeline(str(reference))


def load_for_use(
    base_model: str | None,
    weights: str | None,
    clip_image_encoder: str | None,
    faces: FaceAnalysisConfig | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = False,
) -> Any:
    """The pipeline as generate, eval and serve load it: on `device_and_dtype`'s device and precision; face
    options only when they differ from the defaults (otherwise the pipeline takes the analysis the weights
    record, else the default for them: the authors' weights were made with InsightFace's ArcFace)."""
    from dynamicid.generation.config import device_and_dtype
    from dynamicid.generation.pipeline import DynamicIDPipeline

    torch_device, torch_dtype = device_and_dtype(device, dtype)
    face_config = faces if faces is not None and faces != FaceAnalysisConfig() else None
    pipe = DynamicIDPipeline.from_pretrained(
        base_model, weights, clip_image_encoder, face_config=face_config, device=torch_device, dtype=torch_dtype
    )
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def local_pipeline(reference: str) -> str:
    return hub.resolve(reference, "DynamicID pipeline")


def default_face_config(weights_reference: str | None) -> FaceAnalysisConfig:
    """The authors' weights expect InsightFace buffalo_l's 512-d ArcFace: with the default weights, fetch the
    pack and use it; other weights get the default analysis (their dimension is checked at use)."""
    if weights_reference is not None:
        return FaceAnalysisConfig()
    pack = hub.fetch_buffalo_l()
    return FaceAnalysisConfig(detector="insightface", detector_model=pack, embedder="insightface", embedder_model=pack)


def face_config_for(requested: FaceAnalysisConfig | None, loaded: Any, weights: str | None) -> FaceAnalysisConfig:
    """The analysis reference photos go through: the one asked for, else the one the weights record (the
    analysis of their training data), else the default for those weights. An asked-for embedder that
    differs from the recorded one is refused by name."""
    where = f"{weights or hub.DEFAULTS['weights'].reference} dynamicid.json"
    recorded = config_of(loaded.face_analysis, where) if loaded.face_analysis else None
    if requested is None:
        return recorded or default_face_config(weights)
    if recorded is not None:
        check_same_embedder(requested, recorded, weights or hub.DEFAULTS["weights"].reference)
    return requested


def _variant(device: Any, dtype: Any) -> str | None:
    return "fp16" if dtype == torch.float16 and str(device or "").startswith("cuda") else None


def _default(reference: str | None, part: str) -> str:
    return reference or hub.DEFAULTS[part].reference


def from_parts(
    cls: Any, base: Any, weights: Any, clip_image_encoder: Any, face_config: Any, device: Any, dtype: Any
) -> Any:
    from diffusers import DDIMScheduler

    variant = _variant(device, dtype)
    parts = load_base_model(_default(base, "base_model"), variant)
    image_encoder, feature_extractor = load_clip_image_encoder(_default(clip_image_encoder, "clip_image_encoder"))
    loaded = load_weights(_default(weights, "weights"), processor_layout(parts.unet))
    face_config = face_config_for(face_config, loaded, weights)
    pipe = cls(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config),
        **_dynamicid_parts(loaded, image_encoder, feature_extractor, face_config),
    )
    return _ready(pipe, device, dtype)


def _dynamicid_parts(loaded: Any, image_encoder: Any, feature_extractor: Any, face_config: Any) -> dict[str, Any]:
    """The pipeline's own parts beside the base model's: the CLIP image encoder, the DynamicID weights and
    the face analysis they were trained with."""
    return {
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "face_encoder": loaded.face_encoder,
        "saa": loaded.attention,
        "imr": loaded.imr,
        "keypoint_encoder": loaded.keypoint_encoder,
        "face_analysis": asdict(face_config),
    }


def onto_pipe(cls: Any, pipeline: Any, weights: Any, clip_image_encoder: Any, face_config: Any, **kwargs: Any) -> Any:
    """The pipeline's base parts, shared, plus the DynamicID parts loaded for its UNet."""
    image_encoder, feature_extractor = load_clip_image_encoder(_default(clip_image_encoder, "clip_image_encoder"))
    loaded = load_weights(_default(weights, "weights"), processor_layout(pipeline.unet))
    face_config = face_config_for(face_config, loaded, weights)
    parts = pipeline.components
    pipe = cls(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=kwargs.get("scheduler", parts["scheduler"]),
        **_dynamicid_parts(loaded, image_encoder, feature_extractor, face_config),
    )
    return _ready(pipe, pipeline.device, pipeline.unet.dtype)


def _ready(pipe: Any, device: Any, dtype: Any) -> Any:
    """Inference mode for every part, then the device and dtype asked for."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    if device is not None:
        pipe.to(device)
    if dtype is not None and dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe
